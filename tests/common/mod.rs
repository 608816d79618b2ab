//! Harness for Tandem's end-to-end tests: real `tandemd` processes, real clients.
//!
//! - [`Broker`] starts `tandemd` on a free port with a fresh data directory and
//!   kills it (and removes the directory) when dropped.
//! - [`run_python`] / [`run_node`] run a test client from `tests/clients/` to
//!   completion; [`spawn_python`] / [`spawn_node`] start one in the background as
//!   a [`ClientProcess`] whose output lines can be watched while it runs.
//! - [`wait_until`] is the only way a test waits: poll a condition until a
//!   deadline. [`wait_until_idle`] waits until processes have gone quiet, for
//!   tests that must show that something does *not* happen.
//!
//! Every process is killed on its deadline and when its handle is dropped, so a
//! failing test never leaves a broker or client behind; a failing test prints the
//! stderr of the processes it started.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

pub mod json;

pub use json::Json;

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a broker may take to print its `listening on` line.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(20);

/// How often [`wait_until`] re-checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The `--timeout` given to a client whose arguments name none.
pub const DEFAULT_CLIENT_TIMEOUT_SECS: u64 = 30;

/// How long past its own `--timeout` a client may run before the harness kills it.
const CLIENT_GRACE: Duration = Duration::from_secs(15);

/// How long a terminated or killed process may take to be reaped.
const EXIT_DEADLINE: Duration = Duration::from_secs(10);

/// Debian's python3-qpid-proton installs only for the system interpreter.
pub const PYTHON: &str = "/usr/bin/python3";

/// Polls `condition` every [`POLL_INTERVAL`] until it holds (true) or `deadline`
/// has passed (false). The only acceptable way for a test to wait.
#[must_use]
pub fn wait_until(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// A directory under the system temp dir, removed with everything in it on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("tandem-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The `tandemd` binary cargo built for these tests.
pub fn tandemd_path() -> &'static str {
    env!("CARGO_BIN_EXE_tandemd")
}

/// A command for `tandemd` with exactly `args`, for tests of start-up itself
/// (bad flags, port conflicts); it dies with the test if the test is aborted.
pub fn tandemd_command(args: &[&str]) -> Command {
    let mut command = Command::new(tandemd_path());
    command.args(args);
    die_with_parent(&mut command);
    command
}

/// Runs `tandemd` with exactly `args` to completion (killed after `deadline`).
pub fn run_tandemd(args: &[&str], deadline: Duration) -> ClientOutput {
    run_to_completion("tandemd", tandemd_command(args), deadline)
}

/// A running `tandemd`, listening on 127.0.0.1 on a port it chose.
pub struct Broker {
    child: Child,
    port: u16,
    shards: usize,
    /// Every stdout line after the `listening on` line (drained so the broker
    /// never blocks on a full pipe).
    stdout: Arc<Mutex<Vec<String>>>,
    stderr_path: PathBuf,
    status: Option<ExitStatus>,
    /// Holds the data directory and the stderr file; dropped last.
    dir: TempDir,
}

impl Broker {
    /// Starts `tandemd --port 0 --interface 127.0.0.1 --data-dir DIR --auth no ARGS`
    /// and waits for its `listening on` line; panics (with its stderr) if the
    /// broker exits first or does not listen within [`STARTUP_DEADLINE`].
    pub fn start(args: &[&str]) -> Broker {
        let dir = TempDir::new("broker");
        let data_dir = dir.join("data");
        fs::create_dir_all(&data_dir).expect("creating the data dir");
        let stderr_path = dir.join("tandemd.stderr");
        let stderr = File::create(&stderr_path).expect("creating the stderr file");
        let data_dir = data_dir.to_str().expect("UTF-8 temp dir").to_owned();
        let mut command = tandemd_command(&[
            "--port",
            "0",
            "--interface",
            "127.0.0.1",
            "--data-dir",
            &data_dir,
            "--auth",
            "no",
        ]);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", tandemd_path()));
        let (first_lines, stdout) = read_stdout_lines(child.stdout.take().expect("piped stdout"));

        let deadline = Instant::now() + STARTUP_DEADLINE;
        let mut seen = Vec::new();
        let listening = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match first_lines.recv_timeout(left) {
                Ok(line) => match parse_listening_line(&line) {
                    Some(found) => break Ok(found),
                    None => seen.push(line),
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    break Err(format!(
                        "no `listening on` line within {STARTUP_DEADLINE:?}"
                    ))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break Err("tandemd closed stdout (exited?) before listening".to_owned())
                }
            }
        };
        match listening {
            Ok((port, shards)) => Broker {
                child,
                port,
                shards,
                stdout,
                stderr_path,
                status: None,
                dir,
            },
            Err(why) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "tandemd {args:?} failed to start: {why}; exit: {status:?}\n\
                     --- stdout ---\n{}\n--- stderr ---\n{}",
                    seen.join("\n"),
                    fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, as the clients' `--url` takes it.
    pub fn url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The shard count from the `listening on` line.
    pub fn shards(&self) -> usize {
        self.shards
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the broker wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Stdout lines after the `listening on` line.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// SIGTERM, then wait for the exit; panics if it takes longer than 10 s.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal_and_wait(libc::SIGTERM)
    }

    /// Sends `signal` and waits for the exit; panics if it takes longer than 10 s.
    pub fn signal_and_wait(&mut self, signal: libc::c_int) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        send_signal(self.pid(), signal);
        match wait_for_exit(&mut self.child, EXIT_DEADLINE) {
            Some(status) => {
                self.status = Some(status);
                status
            }
            None => {
                self.kill();
                panic!(
                    "tandemd did not exit within {EXIT_DEADLINE:?} of signal {signal}\n\
                     --- stderr ---\n{}",
                    self.stderr()
                );
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!(
                "--- tandemd (pid {}, port {}) stderr ---\n{}--- end of tandemd stderr ---",
                self.child.id(),
                self.port,
                tail(&self.stderr(), 200)
            );
        }
    }
}

/// Parses `tandemd listening on amqp://127.0.0.1:PORT (N shards)`.
fn parse_listening_line(line: &str) -> Option<(u16, usize)> {
    let rest = line.split("listening on amqp://").nth(1)?;
    let mut words = rest.split_whitespace();
    let address = words.next()?;
    let port = address.rsplit(':').next()?.parse().ok()?;
    let shards = words
        .next()
        .and_then(|w| w.trim_start_matches('(').parse().ok())
        .unwrap_or(1);
    Some((port, shards))
}

/// Reads a broker's stdout on a thread: the lines go to the returned channel
/// (for the start-up wait) and are kept in the returned vector.
fn read_stdout_lines(stdout: ChildStdout) -> (mpsc::Receiver<String>, Arc<Mutex<Vec<String>>>) {
    let (sender, receiver) = mpsc::channel();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&lines);
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            kept.lock().unwrap().push(line.clone());
            let _ = sender.send(line);
        }
    });
    (receiver, lines)
}

fn send_signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our child.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Asks the kernel to SIGKILL the child when the thread that spawned it exits,
/// so an aborted test run (Ctrl-C, a crashed test binary) leaves no process
/// behind. Children are spawned from the test's own thread, which lives as long
/// as the test.
fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl(2),
    // which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn wait_for_exit(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let mut status = None;
    let exited = wait_until(deadline, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if exited {
        status
    } else {
        None
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = all[start..].join("\n");
    out.push('\n');
    out
}

// ---------------------------------------------------------------------------
// Test clients

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
    let label = format!("{lang:?} {name} {}", args.join(" "));
    ClientProcess::spawn(label, lang.command(name, args), client_deadline(args))
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

fn run_to_completion(label: &str, command: Command, deadline: Duration) -> ClientOutput {
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

// ---------------------------------------------------------------------------
// Quiescence

/// CPU time and runnable state of all threads of some processes, from /proc.
#[derive(Clone, Copy, Debug)]
struct Activity {
    cpu_ns: u64,
    runnable: bool,
}

fn activity(pids: &[u32]) -> Option<Activity> {
    let mut total = Activity {
        cpu_ns: 0,
        runnable: false,
    };
    for pid in pids {
        let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        for task in tasks.flatten() {
            let path = task.path();
            // schedstat: nanoseconds on CPU, first field.
            let cpu = fs::read_to_string(path.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            // stat: the state is the first field after the parenthesised name.
            let state = fs::read_to_string(path.join("stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()?
                        .split_whitespace()
                        .next()
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            total.cpu_ns += cpu;
            total.runnable |= state == "R";
        }
    }
    Some(total)
}

/// The CPU all watched processes together may use in a quiet window and still
/// count as idle: timers and heartbeats cost microseconds, real work more.
const IDLE_CPU_BUDGET: Duration = Duration::from_millis(5);

/// Waits until the processes `pids` have been idle for `quiet_for`: together
/// they used at most 5 ms of CPU in that window and no thread of theirs was seen
/// runnable twice in a row (a starved process is runnable, not idle). Returns
/// false if that does not happen within `deadline` or a process exits.
///
/// This is how a test shows that something does *not* happen: once the broker
/// and its clients are idle, nothing is in flight that could still change the
/// outcome, so a check made afterwards is final. The wait ends as soon as the
/// condition holds; it never sleeps for a guessed time.
#[must_use]
pub fn wait_until_idle(pids: &[u32], quiet_for: Duration, deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    // Start of the current quiet window, and the CPU time then.
    let mut window: Option<(Instant, u64)> = None;
    let mut was_runnable = false;
    loop {
        let Some(now_activity) = activity(pids) else {
            return false;
        };
        let now = Instant::now();
        let busy = now_activity.runnable && was_runnable;
        was_runnable = now_activity.runnable;
        match window {
            Some((start, cpu_at_start))
                if !busy
                    && Duration::from_nanos(now_activity.cpu_ns.saturating_sub(cpu_at_start))
                        <= IDLE_CPU_BUDGET =>
            {
                if now.duration_since(start) >= quiet_for {
                    return true;
                }
            }
            _ => window = Some((now, now_activity.cpu_ns)),
        }
        if now >= end {
            return false;
        }
        thread::sleep(POLL_INTERVAL);
    }
}
