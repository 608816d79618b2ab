//! `tandem-perf compare`: one scenario (a `throughput` or `latency` command
//! line) against several named brokers in turn, alternating, for several
//! rounds; then one table of medians with ratios to the first broker, a `null`
//! row (the harness against its own peers) and a `limit` row (plain loopback
//! TCP), so every figure is read beside what the harness and the machine can do.
//!
//! `--broker NAME=URL[/ADDRESS]`: everything after the first `/` behind
//! host:port is the address. RabbitMQ's addresses keep their leading slash
//! (`rabbitmq=127.0.0.1:5673/amq/queue/perf` sends to `/amq/queue/perf`);
//! any other loses it (`tandem=127.0.0.1:5672/perf` sends to `perf`).

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, Parser};
use serde::Serialize;

use crate::hgrm;
use crate::limit::{self, Budget, LimitResult};
use crate::load;
use crate::proton_c;
use crate::report::{thousands, RunResult};
use crate::setup::{self, Shape};
use crate::{Cli, Command, LoadArgs, Output};

/// How long the limit row pushes bytes each round (a broker run's message count
/// would be over in milliseconds on loopback, too short to measure well).
const LIMIT_TIME: std::time::Duration = std::time::Duration::from_secs(1);
/// Address prefixes of RabbitMQ's AMQP 1.0 plugin, which begin with a slash.
const RABBIT_PREFIXES: [&str; 4] = ["/amq/", "/queue/", "/exchange/", "/topic/"];

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// The run to repeat, as a command line without --url, --address or --json,
    /// e.g. "throughput --messages 200000 --size 1024 --window 1000".
    #[arg(long)]
    pub scenario: String,
    /// NAME=URL[/ADDRESS], repeatable; the first is the reference for ratios.
    /// The address defaults to the scenario's.
    #[arg(long = "broker", required = true)]
    pub brokers: Vec<String>,
    /// NAME=PID: the process to measure CPU of for broker NAME (repeatable;
    /// default: the process listening on its port, when local).
    #[arg(long = "broker-pid")]
    pub broker_pids: Vec<String>,
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Leave out the harness's --null row.
    #[arg(long)]
    pub no_null: bool,
    /// Leave out the loopback limit row.
    #[arg(long)]
    pub no_limit: bool,
    /// Also run the Qpid Proton-C client at this path (`scripts/bench/proton-load
    /// --build` prints it) against every broker, each round right after the
    /// native run: a row `NAME proton-c` beside each broker's.
    #[arg(long, value_name = "PATH")]
    pub proton_c: Option<PathBuf>,
    /// Latency scenarios: write NAME.hgrm here for each broker (its median-p99
    /// round), ready for `tandem-perf plot`.
    #[arg(long)]
    pub hgrm_dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// A broker to measure.
#[derive(Debug, Clone, PartialEq)]
struct Broker {
    name: String,
    url: String,
    address: Option<String>,
    pids: Vec<u32>,
}

/// Splits `NAME=URL[/ADDRESS]`.
fn parse_broker(spec: &str) -> Result<Broker, String> {
    let (name, rest) = spec
        .split_once('=')
        .filter(|(n, r)| !n.is_empty() && !r.is_empty())
        .ok_or_else(|| format!("--broker '{spec}': expected NAME=URL[/ADDRESS]"))?;
    // The host part ends at the first '/' after any credentials ('user/pass@').
    let host_from = rest.rfind('@').map_or(0, |i| i + 1);
    let (url, address) = match rest[host_from..].find('/') {
        Some(i) => {
            let (url, path) = rest.split_at(host_from + i);
            let address = if RABBIT_PREFIXES.iter().any(|p| path.starts_with(p)) {
                path.to_owned()
            } else {
                path[1..].to_owned()
            };
            (url.to_owned(), (!address.is_empty()).then_some(address))
        }
        None => (rest.to_owned(), None),
    };
    Ok(Broker {
        name: name.to_owned(),
        url,
        address,
        pids: Vec::new(),
    })
}

/// The scenario's command, checked to leave the broker to us.
fn parse_scenario(text: &str) -> Result<Command, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    for w in &words {
        let flag = w.split('=').next().unwrap_or(w);
        if ["--url", "--address", "--json", "--null", "--broker-pid"].contains(&flag) {
            return Err(format!(
                "--scenario: leave out {flag}; compare sets it for each broker"
            ));
        }
    }
    let cli = Cli::try_parse_from(std::iter::once("tandem-perf").chain(words))
        .map_err(|e| format!("--scenario: {e}"))?;
    match cli.command {
        c @ (Command::Throughput(_) | Command::Latency(_)) => Ok(c),
        _ => Err("--scenario: must be a throughput or latency command".into()),
    }
}

/// Medians of one row over its rounds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Medians {
    pub msg_per_s: Option<f64>,
    pub mb_per_s: Option<f64>,
    /// msg/s over the first broker's.
    pub ratio: Option<f64>,
    /// msg/s over the limit row's.
    pub of_limit: Option<f64>,
    pub broker_us_per_msg: Option<f64>,
    /// The whole client process (the proton-c rows, which cannot tell their
    /// senders' CPU from their receivers').
    pub client_us_per_msg: Option<f64>,
    pub sender_us_per_msg: Option<f64>,
    pub receiver_us_per_msg: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    pub max_us: Option<f64>,
    /// The broker's stall detector: polls over its threshold, summed over
    /// the rounds, and the longest poll seen by the last round, with its task.
    pub stalls: Option<u64>,
    pub longest_poll_us: Option<u64>,
    pub longest_poll_at: Option<String>,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    /// `broker`, `proton-c` (the real client against a broker), `null` or `limit`.
    pub kind: &'static str,
    pub url: Option<String>,
    pub address: Option<String>,
    pub median: Medians,
    pub failed_rounds: u32,
    pub runs: Vec<RunResult>,
    pub limit_runs: Vec<LimitResult>,
}

impl Row {
    /// A row of harness runs (a broker's, or the harness's own `--null`).
    fn of_runs(
        name: String,
        kind: &'static str,
        url: Option<String>,
        address: Option<String>,
        runs: Vec<RunResult>,
    ) -> Row {
        Row {
            name,
            kind,
            url,
            address,
            median: run_medians(&runs),
            failed_rounds: runs.iter().filter(|r| !r.ok).count() as u32,
            runs,
            limit_runs: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub scenario: String,
    pub rounds: u32,
    pub rows: Vec<Row>,
    pub ok: bool,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The rate a run is judged by: received, or sent when nothing receives.
fn headline_rate(r: &RunResult) -> f64 {
    if r.receivers > 0 {
        r.received_msg_per_s
    } else {
        r.sent_msg_per_s
    }
}

fn run_medians(runs: &[RunResult]) -> Medians {
    let m = |f: &dyn Fn(&RunResult) -> Option<f64>| median(runs.iter().filter_map(f).collect());
    let rate = m(&|r| Some(headline_rate(r)));
    Medians {
        msg_per_s: rate,
        mb_per_s: m(&|r| Some(headline_rate(r) * r.size as f64 / 1e6)),
        broker_us_per_msg: m(&|r| r.cpu.broker_us_per_msg),
        client_us_per_msg: m(&|r| {
            r.cpu
                .sender_us_per_msg
                .is_none()
                .then_some(r.cpu.harness_us_per_msg)
                .flatten()
        }),
        sender_us_per_msg: m(&|r| r.cpu.sender_us_per_msg),
        receiver_us_per_msg: m(&|r| r.cpu.receiver_us_per_msg),
        p50_us: m(&|r| r.latency.as_ref().map(|l| l.p50_us)),
        p99_us: m(&|r| r.latency.as_ref().map(|l| l.p99_us)),
        p999_us: m(&|r| r.latency.as_ref().map(|l| l.p999_us)),
        max_us: m(&|r| r.latency.as_ref().map(|l| l.max_us)),
        stalls: runs
            .iter()
            .filter_map(|r| r.broker_stalls.as_ref().map(|s| s.stalls))
            .reduce(|a, b| a + b),
        longest_poll_us: runs
            .iter()
            .filter_map(|r| r.broker_stalls.as_ref().map(|s| s.longest_us))
            .max(),
        longest_poll_at: runs
            .iter()
            .filter_map(|r| r.broker_stalls.as_ref())
            .max_by_key(|s| s.longest_us)
            .map(|s| s.longest_at.clone()),
        ..Default::default()
    }
}

/// One run of the scenario against `target` (`None`: --null), by the native
/// harness or (`proton_c`) by the Proton-C client.
fn run_once(
    scenario: &Command,
    target: Option<&Broker>,
    proton_c: Option<&std::path::Path>,
) -> Result<(RunResult, Option<hdrhistogram::Histogram<u64>>), String> {
    let adjust = |load: &LoadArgs| {
        let mut load = load.clone();
        match target {
            Some(b) => {
                load.url = b.url.clone();
                if let Some(a) = &b.address {
                    load.address = a.clone();
                }
                load.broker_pid = b.pids.clone();
            }
            None => load.null = true,
        }
        load
    };
    let (plan, notes, command) = match scenario {
        Command::Throughput(t) => {
            let shape = Shape {
                messages: match t.duration {
                    Some(_) => None,
                    None => Some(t.messages.unwrap_or(100_000)),
                },
                duration: t.duration,
                rate: None,
                latency: false,
            };
            let (plan, notes) = setup::plan(&adjust(&t.load), shape)?;
            (plan, notes, "throughput")
        }
        Command::Latency(l) => {
            let shape = Shape {
                messages: None,
                duration: Some(l.duration),
                rate: Some(l.rate),
                latency: true,
            };
            let (plan, notes) = setup::plan(&adjust(&l.load), shape)?;
            (plan, notes, "latency")
        }
        _ => return Err("not a throughput or latency scenario".into()),
    };
    let stalls_before = target.and_then(|_| setup::broker_stalls(&plan.url));
    let (mut r, h) = match proton_c {
        Some(bin) => {
            let (mut r, h) = proton_c::run(bin, &plan, blank_run(scenario))?;
            r.url = plan.url.redacted();
            r.address = plan.address.clone();
            r.notes = notes;
            (r, h)
        }
        None => {
            let run = load::run(&plan, command, notes)?;
            (run.result, run.latency)
        }
    };
    if let Some(before) = stalls_before {
        r.broker_stalls = setup::broker_stalls(&plan.url).map(|mut after| {
            after.stalls = after.stalls.saturating_sub(before.stalls);
            after
        });
    }
    Ok((r, h))
}

/// A failed set-up still makes a row entry, so the table shows the failure.
fn failed_run(scenario: &Command, why: String) -> RunResult {
    let mut r = blank_run(scenario);
    r.errors.push(why);
    r
}

/// A run of the scenario's shape that moved nothing (yet).
fn blank_run(scenario: &Command) -> RunResult {
    let (load, command) = match scenario {
        Command::Throughput(t) => (&t.load, "throughput"),
        Command::Latency(l) => (&l.load, "latency"),
        _ => unreachable!("checked by parse_scenario"),
    };
    RunResult {
        command,
        url: load.url.clone(),
        address: load.address.clone(),
        null: false,
        senders: load.senders,
        receivers: load.receivers,
        size: load.size,
        window: load.window,
        settle: match load.settle {
            crate::Settle::PreSettled => "pre-settled",
            crate::Settle::AtLeastOnce => "at-least-once",
        },
        durable: load.durable,
        messages: None,
        duration_s: None,
        rate: None,
        sent: 0,
        accepted: 0,
        rejected: 0,
        released: 0,
        unsettled: 0,
        received: 0,
        missing: 0,
        duplicates: 0,
        out_of_order: 0,
        unreadable: 0,
        foreign: 0,
        send_seconds: 0.0,
        receive_seconds: 0.0,
        sent_msg_per_s: f64::NAN,
        sent_mb_per_s: f64::NAN,
        received_msg_per_s: f64::NAN,
        received_mb_per_s: f64::NAN,
        cpu: Default::default(),
        latency: None,
        settle_latency: None,
        broker_stalls: None,
        errors: Vec::new(),
        notes: Vec::new(),
        started: false,
        ok: false,
    }
}

pub fn run(args: &CompareArgs) -> Result<Output, String> {
    let scenario = parse_scenario(&args.scenario)?;
    let mut brokers: Vec<Broker> = args
        .brokers
        .iter()
        .map(|s| parse_broker(s))
        .collect::<Result<_, _>>()?;
    for spec in &args.broker_pids {
        let (name, pid) = spec
            .split_once('=')
            .and_then(|(n, p)| Some((n, p.parse::<u32>().ok()?)))
            .ok_or_else(|| format!("--broker-pid '{spec}': expected NAME=PID"))?;
        let b = brokers
            .iter_mut()
            .find(|b| b.name == name)
            .ok_or_else(|| format!("--broker-pid '{spec}': no --broker named '{name}'"))?;
        b.pids.push(pid);
    }
    let (size, presettled, budget) = match &scenario {
        Command::Throughput(t) => (
            t.load.size,
            t.load.settle == crate::Settle::PreSettled,
            Budget::Time(t.duration.map_or(LIMIT_TIME, |d| d.min(LIMIT_TIME * 5))),
        ),
        Command::Latency(l) => (
            l.load.size,
            l.load.settle == crate::Settle::PreSettled,
            Budget::Time(LIMIT_TIME),
        ),
        _ => unreachable!("checked by parse_scenario"),
    };

    let mut runs: Vec<Vec<(RunResult, Option<hdrhistogram::Histogram<u64>>)>> =
        vec![Vec::new(); brokers.len()];
    let mut proton_runs = runs.clone();
    let mut null_runs = Vec::new();
    let mut limit_runs = Vec::new();
    for round in 0..args.rounds.max(1) {
        for (i, b) in brokers.iter().enumerate() {
            eprintln!(
                "compare: round {} of {}: {}",
                round + 1,
                args.rounds,
                b.name
            );
            let r = run_once(&scenario, Some(b), None)
                .unwrap_or_else(|e| (failed_run(&scenario, e), None));
            runs[i].push(r);
            if let Some(bin) = &args.proton_c {
                eprintln!(
                    "compare: round {} of {}: {} proton-c",
                    round + 1,
                    args.rounds,
                    b.name
                );
                let r = run_once(&scenario, Some(b), Some(bin))
                    .unwrap_or_else(|e| (failed_run(&scenario, e), None));
                proton_runs[i].push(r);
            }
        }
        if !args.no_null {
            eprintln!("compare: round {} of {}: null", round + 1, args.rounds);
            let r = run_once(&scenario, None, None)
                .unwrap_or_else(|e| (failed_run(&scenario, e), None));
            null_runs.push(r.0);
        }
        if !args.no_limit {
            eprintln!("compare: round {} of {}: limit", round + 1, args.rounds);
            limit_runs.push(limit::run(size, presettled, budget)?);
        }
    }

    let limit_rate = median(limit_runs.iter().map(|l| l.msg_per_s).collect());
    let mut rows = Vec::new();
    for (b, (rs, prs)) in brokers.iter().zip(runs.iter().zip(&proton_runs)) {
        let proton_name = format!("{} proton-c", b.name);
        for (name, kind, rs) in [(&b.name, "broker", rs), (&proton_name, "proton-c", prs)] {
            if rs.is_empty() {
                continue;
            }
            if let Some(dir) = &args.hgrm_dir {
                write_median_hgrm(dir, &name.replace(' ', "-"), rs)?;
            }
            let results: Vec<RunResult> = rs.iter().map(|(r, _)| r.clone()).collect();
            rows.push(Row::of_runs(
                name.clone(),
                kind,
                Some(b.url.clone()),
                b.address.clone(),
                results,
            ));
        }
    }
    if !args.no_null {
        rows.push(Row::of_runs("null".into(), "null", None, None, null_runs));
    }
    if !args.no_limit {
        rows.push(Row {
            name: "limit".into(),
            kind: "limit",
            url: None,
            address: None,
            median: Medians {
                msg_per_s: limit_rate,
                mb_per_s: median(limit_runs.iter().map(|l| l.mb_per_s).collect()),
                ..Default::default()
            },
            failed_rounds: 0,
            runs: Vec::new(),
            limit_runs,
        });
    }
    let reference = rows.first().and_then(|r| r.median.msg_per_s);
    for row in &mut rows {
        let rate = row.median.msg_per_s;
        row.median.ratio = rate.zip(reference).map(|(r, f)| r / f);
        row.median.of_limit = rate.zip(limit_rate).map(|(r, l)| r / l);
    }
    let comparison = Comparison {
        scenario: args.scenario.clone(),
        rounds: args.rounds,
        ok: rows.iter().all(|r| r.failed_rounds == 0),
        rows,
    };
    Ok(Output {
        text: table(&comparison, matches!(scenario, Command::Latency(_))),
        json: serde_json::to_string_pretty(&comparison).unwrap_or_default(),
        code: if comparison.ok { 0 } else { 1 },
    })
}

/// Writes `name.hgrm` from the round whose p99 is the median.
fn write_median_hgrm(
    dir: &std::path::Path,
    name: &str,
    runs: &[(RunResult, Option<hdrhistogram::Histogram<u64>>)],
) -> Result<(), String> {
    let mut with: Vec<(f64, &hdrhistogram::Histogram<u64>)> = runs
        .iter()
        .filter_map(|(r, h)| Some((r.latency.as_ref()?.p99_us, h.as_ref()?)))
        .collect();
    if with.is_empty() {
        return Ok(());
    }
    with.sort_by(|a, b| a.0.total_cmp(&b.0));
    let h = with[(with.len() - 1) / 2].1;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(format!("{name}.hgrm"));
    std::fs::write(&path, hgrm::render(h))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn cell(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".into(), f)
}

/// The comparison as a Markdown table (pastes into docs as it is).
fn table(c: &Comparison, latency: bool) -> String {
    let mut t = String::new();
    let reference = c.rows.first().map_or("", |r| r.name.as_str());
    let _ = writeln!(
        t,
        "tandem-perf compare: {}\nmedians of {} rounds; ratios to {reference}\n",
        c.scenario, c.rounds
    );
    let mut head = vec![
        "row".to_owned(),
        "msg/s".into(),
        "MB/s".into(),
        format!("× {reference}"),
        "of limit".into(),
        "broker µs/msg".into(),
        "harness µs/msg (send / recv)".into(),
    ];
    if latency {
        head.extend(["p50 µs", "p99 µs", "p99.9 µs", "max µs"].map(String::from));
    }
    let stalls = c.rows.iter().any(|r| r.median.stalls.is_some());
    if stalls {
        head.push("broker stalls (longest poll µs)".into());
    }
    head.push("failed rounds".into());
    let _ = writeln!(t, "| {} |", head.join(" | "));
    let _ = writeln!(t, "|{}", "---|".repeat(head.len()));
    for r in &c.rows {
        let m = &r.median;
        let mut cells = vec![
            r.name.clone(),
            cell(m.msg_per_s, thousands),
            cell(m.mb_per_s, |v| format!("{v:.1}")),
            cell(m.ratio, |v| format!("{v:.2}×")),
            cell(m.of_limit, |v| format!("{:.1}%", v * 100.0)),
            cell(m.broker_us_per_msg, |v| format!("{v:.2}")),
            match (m.sender_us_per_msg, m.receiver_us_per_msg) {
                (None, None) => cell(m.client_us_per_msg, |v| format!("{v:.2} (one process)")),
                (s, r) => format!(
                    "{} / {}",
                    cell(s, |v| format!("{v:.2}")),
                    cell(r, |v| format!("{v:.2}"))
                ),
            },
        ];
        if latency {
            for v in [m.p50_us, m.p99_us, m.p999_us, m.max_us] {
                cells.push(cell(v, |v| format!("{v:.0}")));
            }
        }
        if stalls {
            cells.push(match (m.stalls, m.longest_poll_us) {
                (Some(n), Some(us)) => format!("{n} ({us})"),
                _ => "-".into(),
            });
        }
        cells.push(r.failed_rounds.to_string());
        let _ = writeln!(t, "| {} |", cells.join(" | "));
    }
    for r in &c.rows {
        for (i, run) in r.runs.iter().enumerate() {
            for e in &run.errors {
                let _ = writeln!(t, "{} round {}: error: {e}", r.name, i + 1);
            }
            if run.missing > 0 {
                let _ = writeln!(
                    t,
                    "{} round {}: {} messages missing",
                    r.name,
                    i + 1,
                    run.missing
                );
            }
        }
        if let (Some(us), Some(at)) = (r.median.longest_poll_us, &r.median.longest_poll_at) {
            let _ = writeln!(t, "{}: longest broker poll {us} µs of CPU, in {at}", r.name);
        }
        let notes: std::collections::BTreeSet<&String> =
            r.runs.iter().flat_map(|run| run.notes.iter()).collect();
        for n in notes {
            let _ = writeln!(t, "{}: note: {n}", r.name);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_specs_split_into_url_and_address() {
        let b = parse_broker("tandem=127.0.0.1:5672").expect("ok");
        assert_eq!((b.url.as_str(), b.address), ("127.0.0.1:5672", None));
        let b = parse_broker("rabbitmq=127.0.0.1:5673/amq/queue/perf").expect("ok");
        assert_eq!(b.url, "127.0.0.1:5673");
        assert_eq!(b.address.as_deref(), Some("/amq/queue/perf"));
        let b = parse_broker("t=admin/secret@127.0.0.1:5672/perf").expect("ok");
        assert_eq!(b.url, "admin/secret@127.0.0.1:5672");
        assert_eq!(b.address.as_deref(), Some("perf"));
        assert!(parse_broker("127.0.0.1:5672").is_err());
    }

    #[test]
    fn scenarios_parse_as_commands_and_leave_the_broker_to_compare() {
        match parse_scenario("throughput --messages 2000 --size 64").expect("ok") {
            Command::Throughput(t) => {
                assert_eq!(t.messages, Some(2000));
                assert_eq!(t.load.size, 64);
            }
            _ => panic!("not a throughput command"),
        }
        assert!(matches!(
            parse_scenario("latency --rate 10").expect("ok"),
            Command::Latency(_)
        ));
        let err = parse_scenario("throughput --url x").expect_err("url refused");
        assert!(err.contains("--url"), "{err}");
        assert!(parse_scenario("plot --out x a.hgrm").is_err());
    }

    #[test]
    fn medians_of_odd_and_even_rounds() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN]), None);
    }
}
