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
#![allow(dead_code, unused_imports)]

pub mod certs;
pub mod clients;
pub mod http;
pub mod idle;
pub mod json;
pub mod netns;
pub mod tools;

pub use clients::*;
pub use idle::wait_until_idle;
pub use json::Json;

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long a broker may take to print its `listening on` line.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(20);

/// How often [`wait_until`] re-checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How long a terminated or killed process may take to be reaped.
const EXIT_DEADLINE: Duration = Duration::from_secs(10);

/// A port for a broker that must keep it across restarts (HA members): picked
/// below the kernel's ephemeral range (32768-60999 here), so no outgoing
/// connection can take it while its broker is down; checked free now.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    // Ports handed out before in this process stay taken: a test that stops a
    // broker and starts another on its port must not find that a parallel
    // test was given the port meanwhile.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..1000 {
        let n = seed.wrapping_add(NEXT.fetch_add(7919, Ordering::Relaxed));
        let port = 20_000 + (n % 12_000) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port between 20000 and 32000");
}

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
        thread::sleep(POLL_INTERVAL); // poll: the loop above checks the deadline
    }
}

/// Waits until `wake`: the pace of a loop that acts on a clock of its own (a
/// resource manager's monitor, a sampler), never a wait for something to
/// happen (that is [`wait_until`]).
pub fn pace_until(wake: Instant) {
    let left = wake.saturating_duration_since(Instant::now());
    thread::sleep(left); // pace: returns at the deadline `wake`, the caller's own clock
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
    clients::run_to_completion("tandemd", tandemd_command(args), deadline)
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
    /// The extra arguments it was started with (a restart reuses them).
    args: Vec<String>,
    /// The network namespace it runs in (`None`: the test's own).
    netns: Option<String>,
    /// Holds the data directory and the stderr file; dropped last.
    dir: TempDir,
}

impl Broker {
    /// Starts `tandemd --port 0 --interface 127.0.0.1 --data-dir DIR --auth no ARGS`
    /// and waits for its `listening on` line; panics (with its stderr) if the
    /// broker exits first or does not listen within [`STARTUP_DEADLINE`].
    pub fn start(args: &[&str]) -> Broker {
        let dir = TempDir::new("broker");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Broker::launch(dir, 0, args, None)
    }

    /// Like [`Broker::start`], in the network namespace `netns` (made with
    /// `ip netns add`; the test's addresses are then the namespace's).
    pub fn start_in(netns: &str, args: &[&str]) -> Broker {
        let dir = TempDir::new("broker");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Broker::launch(dir, 0, args, Some(netns.to_owned()))
    }

    /// Kills the broker (SIGKILL, as a crash) if it runs, and starts it again
    /// on the same port and data directory with the same arguments.
    pub fn restart(self) -> Broker {
        let mut old = self;
        old.kill();
        let port = old.port;
        let args = std::mem::take(&mut old.args);
        let netns = old.netns.take();
        // The directory must outlive the old broker's drop: take it over.
        let dir = std::mem::replace(&mut old.dir, TempDir::new("replaced"));
        drop(old);
        Broker::launch(dir, port, args, netns)
    }

    /// The data directory (`--data-dir`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn launch(dir: TempDir, port: u16, args: Vec<String>, netns: Option<String>) -> Broker {
        let data_dir = dir.join("data");
        fs::create_dir_all(&data_dir).expect("creating the data dir");
        let stderr_path = dir.join("tandemd.stderr");
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .expect("creating the stderr file");
        let data_dir = data_dir.to_str().expect("UTF-8 temp dir").to_owned();
        let port_arg = port.to_string();
        let mut command = tandemd_command(&[
            "--port",
            &port_arg,
            "--interface",
            "127.0.0.1",
            "--data-dir",
            &data_dir,
            "--auth",
            "no",
        ]);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        if let Some(ns) = &netns {
            netns::in_netns(&mut command, ns);
        }
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
                args,
                netns,
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
