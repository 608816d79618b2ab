//! The real-client row: one run of `tandem-proton-load` (`perf/proton-c/load.c`,
//! a Qpid Proton-C client, built by `scripts/bench/proton-load --build`) with the
//! scenario's shape, read back into a [`RunResult`] so `compare` can put it in
//! the table beside the native harness.
//!
//! The broker's CPU is sampled around the client process as for a native run.
//! Latency runs have the client write each message's latency (from the time its
//! schedule made it due, as the native harness does) to a file, one number of
//! nanoseconds per line, which becomes the same HdrHistogram.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::consumer::{latency_histogram, MAX_LATENCY_NS};
use crate::cpu::{self, PidSample};
use crate::load::{figures, LoadPlan};
use crate::report::{CpuFigures, RunResult};

/// What the client prints: one JSON object (see the top of load.c).
#[derive(Debug, Default, PartialEq)]
struct ClientReport {
    sent: u64,
    accepted: u64,
    received: u64,
    foreign: u64,
    seconds: f64,
    cpu_seconds: f64,
}

fn parse_report(line: &str) -> Result<ClientReport, String> {
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .map_err(|e| format!("proton-c client printed '{}': {e}", line.trim()))?;
    let u = |k: &str| {
        v[k].as_u64()
            .ok_or_else(|| format!("proton-c client report has no '{k}': {line}"))
    };
    let f = |k: &str| {
        v[k].as_f64()
            .ok_or_else(|| format!("proton-c client report has no '{k}': {line}"))
    };
    Ok(ClientReport {
        sent: u("sent")?,
        accepted: u("accepted")?,
        received: u("received")?,
        foreign: u("foreign")?,
        seconds: f("seconds")?,
        cpu_seconds: f("cpu_seconds")?,
    })
}

/// Reads the client's latency file: one count of nanoseconds per line.
fn read_latencies(text: &str) -> Result<Histogram<u64>, String> {
    let mut h = latency_histogram();
    for (n, line) in text.lines().enumerate() {
        let ns: u64 = line
            .trim()
            .parse()
            .map_err(|_| format!("latency file line {}: '{line}' is not a number", n + 1))?;
        h.saturating_record(ns.clamp(1, MAX_LATENCY_NS));
    }
    Ok(h)
}

/// The client's arguments for `plan`; refuses what it cannot do.
fn client_args(plan: &LoadPlan, latency_file: Option<&Path>) -> Result<Vec<String>, String> {
    if plan.senders != plan.receivers || plan.senders == 0 {
        return Err(format!(
            "the proton-c row runs sender + receiver pairs: --senders {} and --receivers {} must be equal",
            plan.senders, plan.receivers
        ));
    }
    if plan.presettled {
        return Err("the proton-c row sends at-least-once only".into());
    }
    let addr = plan
        .url
        .addrs
        .first()
        .ok_or("the proton-c row needs a broker address")?;
    if plan.url.user.is_some() || addr.transport != tandem_shards::url::Transport::Tcp {
        return Err(
            "the proton-c row connects anonymously over plain TCP: leave credentials and amqps out"
                .into(),
        );
    }
    let count = match (plan.messages, plan.rate, plan.duration) {
        (Some(m), _, _) => m,
        (None, Some(rate), Some(d)) => (rate * d.as_secs_f64()).round().max(1.0) as u64,
        _ => return Err("the proton-c row needs --messages, or --rate with --duration".into()),
    };
    let mut args = vec![
        "--url".into(),
        addr.socket_string(),
        "--address".into(),
        plan.address.clone(),
        "--count".into(),
        count.to_string(),
        "--size".into(),
        plan.size.to_string(),
        "--window".into(),
        plan.window.to_string(),
        "--pairs".into(),
        plan.senders.to_string(),
        "--queues".into(),
        plan.queues.to_string(),
        // One event thread per pair, up to one per core (a 2-core host is
        // shared with the broker anyway).
        "--threads".into(),
        plan.senders
            .min(crate::executors::cores().len().max(1) as u32)
            .min(16)
            .to_string(),
        "--durable".into(),
        if plan.durable { "yes" } else { "no" }.into(),
        "--timeout".into(),
        client_timeout(plan, count).as_secs().to_string(),
    ];
    if let Some(rate) = plan.rate {
        args.extend(["--rate".into(), format!("{}", rate.round().max(1.0) as u64)]);
    }
    if let Some(f) = latency_file {
        args.extend(["--latencies".into(), f.display().to_string()]);
    }
    Ok(args)
}

/// How long the client may take in all: the schedule (or 2 µs a message flat
/// out, far below any broker here) plus the idle timeout, and a minute.
fn client_timeout(plan: &LoadPlan, count: u64) -> Duration {
    let expected = plan
        .duration
        .unwrap_or(Duration::from_micros(2 * count.min(u64::MAX / 2)));
    expected + plan.idle_timeout + Duration::from_secs(60)
}

/// One run of the client at `bin` with `plan`'s shape.
pub fn run(
    bin: &Path,
    plan: &LoadPlan,
    blank: RunResult,
) -> Result<(RunResult, Option<Histogram<u64>>), String> {
    let latency_file = plan.latency.then(|| {
        std::env::temp_dir().join(format!(
            "tandem-perf-proton-{}-{}.lat",
            std::process::id(),
            crate::message::new_run_id()
        ))
    });
    let args = client_args(plan, latency_file.as_deref())?;
    let pids_before = PidSample::take(&plan.broker_pids);
    let out = Command::new(bin)
        .args(&args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()));
    let broker_cpu = PidSample::take(&plan.broker_pids).since(&pids_before);
    let latencies = latency_file.as_ref().map(|f| {
        let text = std::fs::read_to_string(f);
        let _ = std::fs::remove_file(f);
        text.map_err(|e| format!("cannot read {}: {e}", f.display()))
    });
    let out = out?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = parse_report(stdout.lines().last().unwrap_or(""))
        .map_err(|e| format!("{e}{}", stderr_note(&stderr)))?;

    let mut r = blank;
    r.messages = plan.messages;
    r.duration_s = plan.duration.map(|d| d.as_secs_f64());
    r.rate = plan.rate;
    r.sent = report.sent;
    r.accepted = report.accepted;
    r.unsettled = report.sent.saturating_sub(report.accepted);
    r.received = report.received;
    r.missing = report.accepted.saturating_sub(report.received);
    r.foreign = report.foreign;
    r.send_seconds = report.seconds;
    r.receive_seconds = report.seconds;
    let rate = |n: u64| n as f64 / report.seconds.max(1e-9);
    r.sent_msg_per_s = rate(report.sent);
    r.received_msg_per_s = rate(report.received);
    r.sent_mb_per_s = r.sent_msg_per_s * plan.size as f64 / 1e6;
    r.received_mb_per_s = r.received_msg_per_s * plan.size as f64 / 1e6;
    r.cpu = CpuFigures {
        harness_us_per_msg: cpu::us_per_message(
            Duration::from_secs_f64(report.cpu_seconds.max(0.0)),
            report.received,
        ),
        broker_us_per_msg: broker_cpu.and_then(|c| cpu::us_per_message(c, report.received)),
        broker_pids: plan.broker_pids.clone(),
        ..Default::default()
    };
    r.started = true;
    let histogram = match latencies {
        Some(text) => Some(read_latencies(&text?)?),
        None => None,
    };
    r.latency = histogram.as_ref().and_then(|h| figures(h, Duration::ZERO));
    if !out.status.success() {
        r.errors.push(format!(
            "proton-c client exited with {}{}",
            out.status,
            stderr_note(&stderr)
        ));
    }
    r.ok = r.errors.is_empty() && r.missing == 0 && r.accepted == r.sent;
    Ok((r, histogram))
}

fn stderr_note(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_report_line_reads_back_and_names_what_is_missing() {
        let r = parse_report(
            r#"{"client":"proton-c","sent":10,"accepted":10,"received":9,"foreign":2,"seconds":0.5,"msg_per_s":18,"cpu_seconds":0.25,"cpu_us_per_msg":1.0}"#,
        )
        .expect("parses");
        assert_eq!(
            r,
            ClientReport {
                sent: 10,
                accepted: 10,
                received: 9,
                foreign: 2,
                seconds: 0.5,
                cpu_seconds: 0.25
            }
        );
        let err = parse_report(r#"{"sent":1}"#).expect_err("incomplete");
        assert!(err.contains("'accepted'"), "{err}");
        assert!(parse_report("tandem-proton-load: oops").is_err());
    }

    #[test]
    fn latency_files_become_histograms_and_bad_lines_are_named() {
        let h = read_latencies("1000\n2000\n3000\n").expect("reads");
        assert_eq!(h.len(), 3);
        assert!(h.max() >= 2990 && h.max() <= 3010, "{}", h.max());
        let err = read_latencies("1000\nabc\n").expect_err("bad line");
        assert!(err.contains("line 2"), "{err}");
    }
}
