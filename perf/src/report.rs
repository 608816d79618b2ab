//! What a run reports, as text for people and JSON for scripts: the same
//! [`RunResult`] either way (field names are the JSON keys).

use std::fmt::Write as _;

use serde::Serialize;

/// One throughput or latency run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// `throughput` or `latency`.
    pub command: &'static str,
    /// The broker URL (password hidden), or `null` for `--null`.
    pub url: String,
    pub address: String,
    pub null: bool,
    pub senders: u32,
    pub receivers: u32,
    pub size: usize,
    pub window: u32,
    /// `at-least-once` or `pre-settled`.
    pub settle: &'static str,
    pub durable: bool,
    pub messages: Option<u64>,
    pub duration_s: Option<f64>,
    /// Target send rate (latency runs).
    pub rate: Option<f64>,
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub released: u64,
    /// Sent at-least-once but never settled (the run stopped first).
    pub unsettled: u64,
    /// This run's messages received, duplicates included.
    pub received: u64,
    /// Got through to the broker (accepted, or sent pre-settled) but never
    /// received.
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub unreadable: u64,
    /// Messages of earlier runs found on the queue (not counted above).
    pub foreign: u64,
    pub send_seconds: f64,
    pub receive_seconds: f64,
    pub sent_msg_per_s: f64,
    pub sent_mb_per_s: f64,
    pub received_msg_per_s: f64,
    pub received_mb_per_s: f64,
    pub cpu: CpuFigures,
    pub latency: Option<LatencyFigures>,
    /// At-least-once: from handing a message to the engine to its settlement.
    pub settle_latency: Option<LatencyFigures>,
    /// The broker's stall detector: stalls during this run, longest poll so
    /// far (`None`: not Tandem, or its detector is off).
    pub broker_stalls: Option<StallReading>,
    pub errors: Vec<String>,
    pub notes: Vec<String>,
    /// Every client connected and the run began (false: the errors say why not).
    pub started: bool,
    /// No errors, nothing missing, nothing refused.
    pub ok: bool,
}

/// CPU in microseconds per message.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuFigures {
    /// The whole harness process (less `--null` peers) per message moved.
    pub harness_us_per_msg: Option<f64>,
    /// Sender threads per message sent.
    pub sender_us_per_msg: Option<f64>,
    /// Receiver threads per message received.
    pub receiver_us_per_msg: Option<f64>,
    /// The broker processes per message moved.
    pub broker_us_per_msg: Option<f64>,
    pub broker_pids: Vec<u32>,
    /// `--null`: the sinks per message sent, the sources per message received.
    pub null_sink_us_per_msg: Option<f64>,
    pub null_source_us_per_msg: Option<f64>,
}

/// A Tandem broker's stall detector (`stall-threshold`), around one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StallReading {
    /// Polls over the threshold (during the run, once taken as a difference).
    pub stalls: u64,
    /// The broker's longest poll since it started, in µs of CPU.
    pub longest_us: u64,
    /// Which task took it.
    pub longest_at: String,
}

/// End-to-end latency in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencyFigures {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// How far behind their schedule the senders fell at worst.
    pub max_send_lag_us: f64,
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

/// Groups thousands: 1234567 -> "1,234,567".
pub fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn plural(n: u32, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

impl RunResult {
    pub fn to_text(&self) -> String {
        let mut t = String::new();
        let target = if self.null {
            "the harness's own --null peers".to_owned()
        } else {
            format!("{} '{}'", self.url, self.address)
        };
        let _ = writeln!(
            t,
            "tandem-perf {}: {target}; {} + {}, {}-byte messages, window {}, {}{}",
            self.command,
            plural(self.senders, "sender"),
            plural(self.receivers, "receiver"),
            self.size,
            self.window,
            self.settle,
            if self.durable { ", durable" } else { "" },
        );
        if !self.started {
            let _ = writeln!(t, "  did not start");
            return self.finish_text(t);
        }
        let _ = writeln!(
            t,
            "  sent      {:>10} in {:.3} s: {:>10} msg/s ({:.1} MB/s); accepted {}, rejected {}, released {}{}",
            self.sent,
            self.send_seconds,
            thousands(self.sent_msg_per_s),
            self.sent_mb_per_s,
            self.accepted,
            self.rejected,
            self.released,
            if self.unsettled > 0 {
                format!(", never settled {}", self.unsettled)
            } else {
                String::new()
            }
        );
        if self.receivers > 0 {
            let _ = writeln!(
                t,
                "  received  {:>10} in {:.3} s: {:>10} msg/s ({:.1} MB/s); missing {}, duplicates {}, out of order {}",
                self.received,
                self.receive_seconds,
                thousands(self.received_msg_per_s),
                self.received_mb_per_s,
                self.missing,
                self.duplicates,
                self.out_of_order
            );
        }
        if self.senders == 0 {
            let _ = writeln!(
                t,
                "  drained: {} sent by earlier runs (counted), {} unreadable",
                self.foreign, self.unreadable
            );
        } else if self.unreadable > 0 || self.foreign > 0 {
            let _ = writeln!(
                t,
                "  also received {} unreadable and {} from earlier runs (not counted)",
                self.unreadable, self.foreign
            );
        }
        let c = &self.cpu;
        let mut cpu = format!(
            "  CPU µs/msg: harness {} (senders {}, receivers {})",
            opt(c.harness_us_per_msg),
            opt(c.sender_us_per_msg),
            opt(c.receiver_us_per_msg)
        );
        if !c.broker_pids.is_empty() {
            let pids: Vec<String> = c.broker_pids.iter().map(u32::to_string).collect();
            let _ = write!(
                cpu,
                ", broker {} (pid {})",
                opt(c.broker_us_per_msg),
                pids.join(", ")
            );
        }
        if self.null {
            let _ = write!(
                cpu,
                ", null sink {}, null source {}",
                opt(c.null_sink_us_per_msg),
                opt(c.null_source_us_per_msg)
            );
        }
        let _ = writeln!(t, "{cpu}");
        if let Some(l) = &self.latency {
            let _ = writeln!(
                t,
                "  latency µs: p50 {:.0}, p90 {:.0}, p99 {:.0}, p99.9 {:.0}, max {:.0} (min {:.0}, mean {:.0}, {} messages; senders at worst {:.0} µs behind schedule)",
                l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.min_us, l.mean_us, l.count, l.max_send_lag_us
            );
        }
        if let Some(l) = &self.settle_latency {
            let _ = writeln!(
                t,
                "  publish→settle µs: p50 {:.0}, p90 {:.0}, p99 {:.0}, p99.9 {:.0}, max {:.0} ({} messages)",
                l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.count
            );
        }
        self.finish_text(t)
    }

    /// Notes, errors and the verdict.
    fn finish_text(&self, mut t: String) -> String {
        for n in &self.notes {
            let _ = writeln!(t, "  note: {n}");
        }
        for e in &self.errors {
            let _ = writeln!(t, "  error: {e}");
        }
        let verdict = if self.ok {
            "OK".to_owned()
        } else {
            let mut why = Vec::new();
            if self.missing > 0 {
                why.push(format!("{} missing", self.missing));
            }
            if self.rejected + self.released > 0 {
                why.push(format!(
                    "{} not accepted by the broker",
                    self.rejected + self.released
                ));
            }
            if self.unsettled > 0 {
                why.push(format!("{} never settled", self.unsettled));
            }
            if !self.errors.is_empty() {
                why.push(plural(self.errors.len() as u32, "error"));
            }
            format!("FAILED ({})", why.join(", "))
        };
        let _ = writeln!(t, "  result: {verdict}");
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }
}
