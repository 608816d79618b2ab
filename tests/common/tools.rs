//! Running the admin tools (`tandem-ha`, `tandem-config`, `tandem-stat`) from
//! tests, and reading what they print.

use std::process::{Command, Output};

/// Runs an admin tool with `--timeout SECS` and returns what it did.
pub fn run_tool(name: &str, args: &[&str], timeout_secs: u32) -> Output {
    run_tool_in(None, name, args, timeout_secs)
}

/// [`run_tool`] in network namespace `netns` (`None`: the test's own).
pub fn run_tool_in(netns: Option<&str>, name: &str, args: &[&str], timeout_secs: u32) -> Output {
    let path = match name {
        "tandem-ha" => env!("CARGO_BIN_EXE_tandem-ha"),
        "tandem-config" => env!("CARGO_BIN_EXE_tandem-config"),
        "tandem-stat" => env!("CARGO_BIN_EXE_tandem-stat"),
        other => panic!("no tool {other}"),
    };
    let mut command = Command::new(path);
    command
        .args(args)
        .args(["--timeout", &timeout_secs.to_string()]);
    if let Some(ns) = netns {
        super::netns::in_netns(&mut command, ns);
    }
    command
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"))
}

/// Runs an admin tool with a 10 s timeout.
pub fn tool(name: &str, args: &[&str]) -> Output {
    run_tool(name, args, 10)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_owned()
}

/// `tandem-ha -b URL status --expect=STATE` succeeded.
pub fn status_is(url: &str, expect: &str) -> bool {
    tool(
        "tandem-ha",
        &["-b", url, "status", &format!("--expect={expect}")],
    )
    .status
    .success()
}

/// Command lines for `n` members of one HA cluster on fresh ports (short
/// heartbeat and maintenance intervals), each followed by `extra`.
pub fn ha_member_args(n: usize, extra: &[&str]) -> Vec<Vec<String>> {
    let ports: Vec<u16> = (0..n).map(|_| super::free_port()).collect();
    let url = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    ports
        .iter()
        .map(|p| {
            let mut args: Vec<String> = [
                "--port",
                &p.to_string(),
                "--ha-cluster",
                "yes",
                "--ha-brokers-url",
                &url,
                "--link-heartbeat-interval",
                "1",
                "--link-maintenance-interval",
                "0.2",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        })
        .collect()
}

/// `tandem-passwd -f FILE USER` with the password on stdin.
pub fn passwd(file: &std::path::Path, user: &str, password: &str) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tandem-passwd"))
        .args(["-f", file.to_str().expect("path"), user])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tandem-passwd");
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(format!("{password}\n").as_bytes())
            .expect("password");
    }
    let out = child.wait_with_output().expect("tandem-passwd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
