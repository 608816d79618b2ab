//! Soak (issue 17): a 3-broker cluster under at-least-once Qpid Proton and
//! rhea load for a long while, with a fail-over every 2 minutes (kill -9 of
//! the primary, a promotion, a restart of the killed broker on its data
//! directory). The primary alternates between brokers 0 and 1, so broker 2
//! stays a backup through every fail-over of the run: the long-lived process
//! whose memory tells most.
//!
//! Every 10 s the test reads each broker's resident memory and open files
//! from /proc, and at the end draws them in an SVG. It passes with no settled
//! message lost, every publisher finished, and for every broker process
//! after a minute's warm-up: resident memory within 10 % of its lowest
//! sample, and no more open files at the end than at the start of the
//! series (allowing for the clients' connections moving about).
//!
//! `cargo test` runs 3 minutes (`TANDEM_SOAK_MINUTES`, any number);
//! `scripts/soak --minutes 60` runs the hour. `TANDEM_SOAK_OUT=DIR` keeps the
//! plot, the samples (CSV) and the report there (default: cargo's test temp
//! dir).

mod common;
mod ha_cluster;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{spawn_client, wait_until, ClientProcess, Json, Lang};
use ha_cluster::{now, serial, HaCluster, STATUS_DEADLINE};

/// How often each broker is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// How long after its start a broker process is warming up (its samples
/// are drawn but not judged).
const WARM_UP_S: f64 = 60.0;

/// Resident memory may vary this much (over its lowest sample) after the
/// warm-up.
const RSS_FLAT: f64 = 0.10;

/// Open files a broker may have more at the end of its series than at the
/// start: its clients' connections move between brokers at fail-overs.
const FD_SLACK: usize = 8;

/// A publisher sends at most one new message per this many ms.
const SEND_INTERVAL_MS: u64 = 5;

/// After the window, how long the publishers have to finish, and on top of
/// that, per fail-over of the run: each one holds a publisher up while it
/// reconnects and resends (rhea's reconnect back-off costs it about 5 s).
const CLIENTS_GRACE_S: u64 = 180;
const GRACE_PER_FAILOVER_S: u64 = 10;

/// How much longer than its publisher a receiver waits, so that what was
/// settled just before the publisher gave up still has time to arrive (a
/// receiver that stops with its publisher misses the last settlements and
/// would report them lost).
const RECEIVER_OUTLIVES_S: u64 = 60;

/// One reading of one broker process.
struct Sample {
    /// Seconds since the run began.
    t: f64,
    host: usize,
    /// How many times this host's broker has been restarted before.
    life: usize,
    rss_kib: u64,
    fds: usize,
}

fn read_sample(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

fn env_number(name: &str) -> Option<f64> {
    let value = std::env::var(name).ok()?;
    match value.parse::<f64>() {
        Ok(n) if n > 0.0 => Some(n),
        _ => panic!("{name}={value:?}: not a positive number"),
    }
}

/// A publisher and the receiver (of the other library) draining its queue.
struct Flow {
    queue: &'static str,
    publisher: Lang,
    count: usize,
    sender: ClientProcess,
    receiver: ClientProcess,
}

impl Flow {
    fn start(
        urls: &str,
        queue: &'static str,
        publisher: Lang,
        count: usize,
        timeout_s: u64,
    ) -> Flow {
        let receiver = match publisher {
            Lang::Proton => Lang::Rhea,
            Lang::Rhea => Lang::Proton,
        };
        let count_s = count.to_string();
        let interval = SEND_INTERVAL_MS.to_string();
        let timeout = timeout_s.to_string();
        let recv_timeout = (timeout_s + RECEIVER_OUTLIVES_S).to_string();
        let send_args = [
            "--urls",
            urls,
            "--address",
            queue,
            "--count",
            &count_s,
            "--interval-ms",
            &interval,
            "--timeout",
            &timeout,
        ];
        let recv_args = [
            "--urls",
            urls,
            "--address",
            queue,
            "--expect",
            &count_s,
            "--timeout",
            &recv_timeout,
        ];
        Flow {
            queue,
            publisher,
            count,
            sender: spawn_client(publisher, "ha_send", &send_args),
            receiver: spawn_client(receiver, "ha_recv", &recv_args),
        }
    }

    /// Waits for both clients; (settled, lost, duplicates, whether the
    /// publisher finished).
    fn finish(self) -> (usize, Vec<u64>, u64, bool) {
        let sent = self.sender.wait();
        let settled = common::settled_seqs(&sent.json_lines());
        let received = self.receiver.wait();
        let summary = received.summary();
        assert!(
            summary["received_unique"].as_u64().is_some(),
            "no summary from the receiver of {}: {}\n{}",
            self.queue,
            received.stdout(),
            received.stderr()
        );
        let missing: BTreeSet<u64> = summary["missing"]
            .as_array()
            .map(|m| m.iter().filter_map(Json::as_u64).collect())
            .unwrap_or_default();
        let unexpected = summary["unparsed"].as_u64().unwrap_or(0)
            + summary["out_of_range"].as_u64().unwrap_or(0);
        assert_eq!(unexpected, 0, "{}: unexpected messages", self.queue);
        let lost = settled.intersection(&missing).copied().collect();
        let finished = sent.success() && settled.len() == self.count;
        (
            settled.len(),
            lost,
            summary["duplicates"].as_u64().unwrap_or(0),
            finished,
        )
    }
}

#[test]
fn a_cluster_under_load_with_a_fail_over_every_two_minutes_keeps_its_memory_and_files_flat() {
    let _serial = serial();
    let minutes = env_number("TANDEM_SOAK_MINUTES").unwrap_or(3.0);
    let failover_every =
        Duration::from_secs_f64(env_number("TANDEM_SOAK_FAILOVER_S").unwrap_or(120.0));
    let window = Duration::from_secs_f64(minutes * 60.0);
    let out_dir = std::env::var_os("TANDEM_SOAK_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&out_dir).expect("creating the soak's output directory");

    let mut cluster = HaCluster::start_with_primary(Some("all"), 0);
    let count = (window.as_millis() as u64 / SEND_INTERVAL_MS) as usize;
    let expected_failovers = (window.as_secs_f64() / failover_every.as_secs_f64()) as u64;
    let timeout_s = window.as_secs() + CLIENTS_GRACE_S + GRACE_PER_FAILOVER_S * expected_failovers;
    let flows = [
        Flow::start(&cluster.urls, "soak-proton", Lang::Proton, count, timeout_s),
        Flow::start(&cluster.urls, "soak-rhea", Lang::Rhea, count, timeout_s),
    ];

    let began = Instant::now();
    let began_at = now();
    let mut samples = Vec::new();
    let mut lives = [0usize; 3];
    let mut failovers = Vec::new();
    let mut primary = 0;
    let mut next_sample = began;
    let mut next_failover = began + failover_every;
    while began.elapsed() < window {
        let at = Instant::now();
        if at >= next_sample {
            let t = began.elapsed().as_secs_f64();
            for (host, &life) in lives.iter().enumerate() {
                if let Some((rss_kib, fds)) = read_sample(cluster.pid(host)) {
                    samples.push(Sample {
                        t,
                        host,
                        life,
                        rss_kib,
                        fds,
                    });
                }
            }
            next_sample += SAMPLE_EVERY;
        }
        if at >= next_failover {
            // The primary alternates between 0 and 1; 2 stays a backup.
            let next = 1 - primary;
            cluster.wait_status(next, "ready");
            let killed_at = now();
            cluster.kill(primary);
            let promoted = wait_until(STATUS_DEADLINE, || cluster.promote(next).status.success());
            assert!(
                promoted,
                "broker {next} was never promotable: {}",
                cluster.describe()
            );
            failovers.push((killed_at - began_at, primary, next));
            cluster.restart_member(primary);
            lives[primary] += 1;
            primary = next;
            next_failover += failover_every;
        }
        let wake = next_sample.min(next_failover);
        common::pace_until(wake.min(Instant::now() + SAMPLE_EVERY));
    }
    assert!(
        !failovers.is_empty(),
        "the run was too short for a fail-over"
    );

    // The load ends; everything settled must have arrived.
    let mut report = String::new();
    let _ = writeln!(
        report,
        "soak: {minutes} min, {} fail-overs, {count} messages per publisher\n",
        failovers.len()
    );
    let _ = writeln!(
        report,
        "| queue | publisher | settled | duplicates | lost |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|");
    let mut failures = Vec::new();
    for flow in flows {
        let (queue, publisher) = (flow.queue, flow.publisher);
        let (settled, lost, duplicates, finished) = flow.finish();
        let _ = writeln!(
            report,
            "| {queue} | {publisher:?} | {settled} of {count} | {duplicates} | {} |",
            lost.len()
        );
        if !lost.is_empty() {
            failures.push(format!(
                "{} settled messages on {queue} lost, e.g. {:?}",
                lost.len(),
                &lost[..lost.len().min(20)]
            ));
        }
        if !finished {
            failures.push(format!(
                "the {publisher:?} publisher on {queue} settled {settled} of {count}"
            ));
        }
    }

    // Each broker process after its warm-up.
    let _ = writeln!(report, "\n| broker (restarts) | samples judged | RSS min–max (MiB) | spread | open files first → last (max) |");
    let _ = writeln!(report, "|---|---|---|---|---|");
    for (host, &restarts) in lives.iter().enumerate() {
        for life in 0..=restarts {
            let started = if life == 0 {
                0.0
            } else {
                failovers
                    .iter()
                    .filter(|f| f.1 == host)
                    .nth(life - 1)
                    .map_or(0.0, |f| f.0)
            };
            let judged: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.host == host && s.life == life && s.t >= started + WARM_UP_S)
                .collect();
            if judged.len() < 3 {
                continue;
            }
            let rss_min = judged.iter().map(|s| s.rss_kib).min().unwrap_or(0);
            let rss_max = judged.iter().map(|s| s.rss_kib).max().unwrap_or(0);
            let spread = rss_max as f64 / rss_min.max(1) as f64 - 1.0;
            let fds_first = judged[0].fds;
            let fds_last = judged[judged.len() - 1].fds;
            let fds_max = judged.iter().map(|s| s.fds).max().unwrap_or(0);
            let _ = writeln!(
                report,
                "| {host} ({life}) | {} | {:.1}–{:.1} | {:.1} % | {fds_first} → {fds_last} ({fds_max}) |",
                judged.len(),
                rss_min as f64 / 1024.0,
                rss_max as f64 / 1024.0,
                spread * 100.0
            );
            if spread > RSS_FLAT {
                failures.push(format!(
                    "broker {host} (restart {life}): resident memory varied {:.1} % after warm-up",
                    spread * 100.0
                ));
            }
            if fds_last > fds_first + FD_SLACK {
                failures.push(format!(
                    "broker {host} (restart {life}): open files grew from {fds_first} to {fds_last}"
                ));
            }
        }
    }
    let _ = writeln!(report);
    for (at, from, to) in &failovers {
        let _ = writeln!(
            report,
            "fail-over at {at:.0} s: killed {from}, promoted {to}"
        );
    }

    let svg = out_dir.join("soak.svg");
    let csv = out_dir.join("soak.csv");
    let md = out_dir.join("soak.md");
    let marks: Vec<f64> = failovers.iter().map(|f| f.0).collect();
    std::fs::write(&svg, plot(&samples, &marks, minutes)).expect("writing the plot");
    let mut rows = String::from("t_s,host,life,rss_kib,fds\n");
    for s in &samples {
        let _ = writeln!(
            rows,
            "{:.1},{},{},{},{}",
            s.t, s.host, s.life, s.rss_kib, s.fds
        );
    }
    std::fs::write(&csv, rows).expect("writing the samples");
    std::fs::write(&md, &report).expect("writing the report");
    eprintln!(
        "{report}\nplot {}, samples {}",
        svg.display(),
        csv.display()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Two charts, resident memory and open files over time, a line per broker
/// process, the fail-overs marked.
fn plot(samples: &[Sample], failovers: &[f64], minutes: f64) -> String {
    const W: f64 = 900.0;
    const H: f64 = 260.0;
    const LEFT: f64 = 70.0;
    const TOP: f64 = 40.0;
    const GAP: f64 = 60.0;
    const COLOURS: [&str; 3] = ["#1f77b4", "#d62728", "#2ca02c"];
    let span = (minutes * 60.0).max(1.0);
    let x = |t: f64| LEFT + t / span * (W - LEFT - 20.0);
    let mut svg = String::new();
    let total_h = TOP + 2.0 * H + GAP + 50.0;
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{total_h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="20" font-size="15">Soak: {minutes} min, a fail-over every 2 min (dashed); one line per broker process</text>"#
    );
    type Value = fn(&Sample) -> f64;
    let charts: [(&str, Value); 2] = [
        ("resident memory (MiB)", |s| s.rss_kib as f64 / 1024.0),
        ("open files", |s| s.fds as f64),
    ];
    for (k, (label, value)) in charts.iter().enumerate() {
        let top = TOP + k as f64 * (H + GAP);
        let max = samples.iter().map(value).fold(1.0_f64, f64::max) * 1.15;
        let y = |v: f64| top + H - v / max * H;
        let _ = writeln!(
            svg,
            r##"<rect x="{LEFT}" y="{top}" width="{}" height="{H}" fill="none" stroke="#999"/>"##,
            W - LEFT - 20.0
        );
        let _ = writeln!(svg, r#"<text x="{LEFT}" y="{}">{label}</text>"#, top - 6.0);
        for i in 0..=4 {
            let v = max * i as f64 / 4.0;
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text>"#,
                LEFT - 6.0,
                y(v) + 4.0
            );
        }
        for &t in failovers {
            let _ = writeln!(
                svg,
                r##"<line x1="{0:.1}" x2="{0:.1}" y1="{top}" y2="{1}" stroke="#bbb" stroke-dasharray="4 3"/>"##,
                x(t),
                top + H
            );
        }
        let mut lines: Vec<(usize, usize)> = samples.iter().map(|s| (s.host, s.life)).collect();
        lines.sort_unstable();
        lines.dedup();
        for (host, life) in lines {
            let points: Vec<String> = samples
                .iter()
                .filter(|s| s.host == host && s.life == life)
                .map(|s| format!("{:.1},{:.1}", x(s.t), y(value(s))))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
                COLOURS[host % COLOURS.len()],
                points.join(" ")
            );
        }
    }
    let bottom = TOP + 2.0 * H + GAP;
    for m in 0..=(minutes.ceil() as u64) {
        let t = m as f64 * 60.0;
        if t <= span && (minutes <= 12.0 || m % 5 == 0) {
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{m} min</text>"#,
                x(t),
                bottom + 18.0
            );
        }
    }
    for (host, colour) in COLOURS.iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" fill="{colour}">broker {host}</text>"#,
            LEFT + host as f64 * 90.0,
            bottom + 40.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}
