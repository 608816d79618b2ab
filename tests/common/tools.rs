//! Running the admin tools (`tandem-ha`, `tandem-config`, `tandem-stat`) from
//! tests, and reading what they print.

use std::process::{Command, Output};

/// Runs an admin tool with `--timeout SECS` and returns what it did.
pub fn run_tool(name: &str, args: &[&str], timeout_secs: u32) -> Output {
    let path = match name {
        "tandem-ha" => env!("CARGO_BIN_EXE_tandem-ha"),
        "tandem-config" => env!("CARGO_BIN_EXE_tandem-config"),
        "tandem-stat" => env!("CARGO_BIN_EXE_tandem-stat"),
        other => panic!("no tool {other}"),
    };
    Command::new(path)
        .args(args)
        .args(["--timeout", &timeout_secs.to_string()])
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
