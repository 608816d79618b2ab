//! `/metrics`: the broker's counters in the Prometheus text format, built
//! from the shards' latest published snapshots ([`StatsHandle`]) at each
//! scrape. Nothing here runs on a shard.
//!
//! Names follow Prometheus conventions: a `tandem_` prefix, base units
//! (seconds, bytes), `_total` for counters. `docs/monitoring.md` lists them.

use std::sync::Arc;
use std::time::Instant;

use prometheus::proto::{self, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::TextEncoder;
use tandem_ha::status::BrokerStatus;
use tandem_shards::stats::{Histogram, ShardSnapshot, StatsHandle, HOLD_BOUNDS};

/// Who the broker is, for `tandem_broker_info`.
#[derive(Debug, Clone)]
pub struct BrokerIdentity {
    pub broker_id: String,
    pub version: &'static str,
}

/// What the shards last published, and how the broker is doing as they say.
pub struct Scrape {
    pub shards: Vec<Option<Arc<ShardSnapshot>>>,
    pub at: Instant,
}

impl Scrape {
    pub fn now(stats: &StatsHandle) -> Scrape {
        Scrape {
            shards: stats.shards(),
            at: Instant::now(),
        }
    }

    /// A fact an extension reported (from whichever shard knows it).
    pub fn fact(&self, name: &str) -> Option<&str> {
        self.shards.iter().flatten().find_map(|s| {
            s.report
                .facts
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_str())
        })
    }

    /// The broker's HA status: `standalone` unless its HA role says otherwise.
    pub fn status(&self) -> &str {
        self.fact("ha-status").unwrap_or("standalone")
    }

    /// Shards whose last snapshot is older than `stale` (or missing): a
    /// shard that stopped publishing is stuck or gone.
    pub fn stale_shards(&self, stale: std::time::Duration) -> Vec<usize> {
        self.shards
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.as_ref()
                    .is_none_or(|s| self.at.saturating_duration_since(s.taken) > stale)
            })
            .map(|(i, _)| i)
            .collect()
    }
}

/// The Prometheus text for one scrape.
pub fn render(who: &BrokerIdentity, scrape: &Scrape) -> Result<String, String> {
    let mut m = Metrics::default();
    m.gauge(
        "tandem_broker_info",
        "The broker's identity (always 1)",
        &["broker_id", "version"],
        &[&who.broker_id, who.version],
        1,
    );
    let status = scrape.status();
    for s in BrokerStatus::ALL {
        m.gauge(
            "tandem_ha_status",
            "1 for the broker's HA status (standalone, joining, catchup, ready, recovering, active), 0 for the others",
            &["status"],
            &[s.as_str()],
            i64::from(s.as_str() == status),
        );
    }
    for (fact, name, help) in [
        (
            "ha-epoch",
            "tandem_ha_epoch",
            "The cluster epoch this broker knows",
        ),
        (
            "ha-ready-backups",
            "tandem_ha_ready_backups",
            "Backups connected and ready (on a primary)",
        ),
    ] {
        if let Some(v) = scrape.fact(fact).and_then(|v| v.parse::<i64>().ok()) {
            m.gauge(name, help, &[], &[], v);
        }
    }
    if let Some(uptime) = scrape.shards.iter().flatten().map(|s| s.uptime).max() {
        m.gauge(
            "tandem_uptime_seconds",
            "How long the broker has run",
            &[],
            &[],
            saturating(uptime.as_secs()),
        );
    }
    for (i, snapshot) in scrape.shards.iter().enumerate() {
        let shard = i.to_string();
        let Some(s) = snapshot else { continue };
        shard_metrics(&mut m, &shard, s, scrape.at);
    }
    let mut holds = Histogram::default();
    for s in scrape.shards.iter().flatten() {
        holds.add(&s.report.hold_times);
    }
    m.histogram(
        "tandem_settlement_hold_seconds",
        "How long stored publishes waited for their settlement holders (the backups, the journal) before the publisher was settled",
        holds,
    );
    exchange_metrics(&mut m, scrape);
    extension_metrics(&mut m, scrape);
    for s in scrape.shards.iter().flatten() {
        for series in &s.report.series {
            let (labels, values): (Vec<&'static str>, Vec<&str>) =
                series.labels.iter().map(|(k, v)| (*k, v.as_str())).unzip();
            m.float_gauge(series.name, series.help, &labels, &values, series.value);
        }
    }
    m.encode()
}

fn shard_metrics(m: &mut Metrics, shard: &str, s: &ShardSnapshot, at: Instant) {
    let r = &s.report;
    let l = &["shard"];
    m.gauge(
        "tandem_shard_connections",
        "Connections the shard serves",
        l,
        &[shard],
        saturating(r.connections.len() as u64),
    );
    let t = r.connection_totals();
    for (name, help, v) in [
        ("tandem_shard_messages_in_total", "Messages received from clients and peers", t.messages_in),
        ("tandem_shard_messages_out_total", "Messages sent to consumers and peers", t.messages_out),
        ("tandem_shard_bytes_in_total", "AMQP bytes received (after TLS)", t.bytes_in),
        ("tandem_shard_bytes_out_total", "AMQP bytes sent (before TLS)", t.bytes_out),
        ("tandem_shard_frames_in_total", "AMQP frames received", t.frames_in),
        ("tandem_shard_frames_out_total", "AMQP frames sent", t.frames_out),
        (
            "tandem_executor_stalls_total",
            "Polls of the shard's tasks that used more CPU than stall-threshold (0 with the detector off)",
            r.stalls.stalls,
        ),
    ] {
        m.counter(name, help, l, &[shard], v);
    }
    m.float_gauge(
        "tandem_executor_longest_poll_seconds",
        "The CPU time of the longest poll of the shard's tasks (0 with the stall detector off)",
        l,
        &[shard],
        r.stalls.longest_us as f64 / 1e6,
    );
    m.float_gauge(
        "tandem_shard_snapshot_age_seconds",
        "How old the shard's last published counters are (they are published every 250 ms)",
        l,
        &[shard],
        at.saturating_duration_since(s.taken).as_secs_f64(),
    );
    for &(to, waiting, capacity) in &s.rings {
        let to = to.to_string();
        for (name, help, v) in [
            (
                "tandem_shard_ring_messages",
                "Messages waiting on the ring from the shard to another",
                waiting,
            ),
            (
                "tandem_shard_ring_capacity_messages",
                "How many messages the ring holds (a full ring makes the shard retry)",
                capacity,
            ),
        ] {
            m.gauge(
                name,
                help,
                &["shard", "to"],
                &[shard, &to],
                saturating(v as u64),
            );
        }
    }
    let q = &["queue"];
    for (name, stats) in &r.queues {
        let name: &str = name;
        for (metric, help, v) in [
            ("tandem_queue_messages", "Messages on the queue", stats.depth),
            ("tandem_queue_bytes", "Message bytes on the queue", stats.bytes),
            ("tandem_queue_consumers", "Consumers attached", stats.consumers),
            (
                "tandem_queue_acquired_messages",
                "Messages sent to consumers and not settled yet",
                stats.acquired,
            ),
            (
                "tandem_queue_flow_held_messages",
                "Publishes held back by the queue's flow limit (limit-policy flow-to-disk or block), not stored yet",
                stats.held,
            ),
            (
                "tandem_queue_awaiting_settlement_messages",
                "Stored messages whose publisher's settlement waits for the backups or the journal",
                stats.awaiting_settlement,
            ),
        ] {
            m.gauge(metric, help, q, &[name], saturating(v));
        }
        for (metric, help, v) in [
            (
                "tandem_queue_enqueued_total",
                "Messages stored on the queue",
                stats.enqueues,
            ),
            (
                "tandem_queue_dequeued_total",
                "Messages that left the queue (consumed, dropped, purged)",
                stats.dequeues,
            ),
            (
                "tandem_queue_redelivered_total",
                "Messages released or modified and sent again",
                stats.redeliveries,
            ),
            (
                "tandem_queue_ring_dropped_total",
                "Messages a ring queue dropped for room",
                stats.ring_dropped,
            ),
            (
                "tandem_queue_lvq_replaced_total",
                "Messages a last-value queue replaced",
                stats.lvq_replaced,
            ),
        ] {
            m.counter(metric, help, q, &[name], v);
        }
    }
}

/// Exchanges route on every shard a publisher is on: summed over the shards.
fn exchange_metrics(m: &mut Metrics, scrape: &Scrape) {
    let mut sums: Vec<(&str, u64, u64)> = Vec::new();
    for s in scrape.shards.iter().flatten() {
        for (name, e) in &s.report.exchanges {
            match sums.iter_mut().find(|(n, _, _)| *n == &**name) {
                Some((_, routed, dropped)) => {
                    *routed += e.routed;
                    *dropped += e.dropped;
                }
                None => sums.push((name, e.routed, e.dropped)),
            }
        }
    }
    for (name, routed, dropped) in sums {
        let l = &["exchange"];
        m.counter(
            "tandem_exchange_routed_total",
            "Messages the exchange routed to at least one queue",
            l,
            &[name],
            routed,
        );
        m.counter(
            "tandem_exchange_dropped_total",
            "Messages the exchange matched to no queue",
            l,
            &[name],
            dropped,
        );
    }
}

/// The extensions' counters (store, HA), summed over the shards, under their
/// Prometheus names.
fn extension_metrics(m: &mut Metrics, scrape: &Scrape) {
    let mut sums: Vec<(&'static str, u64)> = Vec::new();
    for s in scrape.shards.iter().flatten() {
        for (name, v) in &s.report.counters {
            match sums.iter_mut().find(|(n, _)| n == name) {
                Some((_, total)) => *total += v,
                None => sums.push((name, *v)),
            }
        }
    }
    for (name, v) in sums {
        let (metric, help) = extension_counter(name);
        m.counter(&metric, &help, &[], &[], v);
    }
}

/// The metric for an extension's counter `name`.
fn extension_counter(name: &str) -> (String, String) {
    let known = match name {
        "store-journal-writes" => {
            Some(("tandem_store_journal_writes_total", "Writes to the journal"))
        }
        "store-journal-bytes" => Some((
            "tandem_store_journal_bytes_total",
            "Bytes written to the journal",
        )),
        "store-persistent-messages" => Some((
            "tandem_store_persistent_messages_total",
            "Persistent messages written to the journal",
        )),
        "ha-catch-up-messages" => Some((
            "tandem_ha_catch_up_messages_total",
            "Messages sent to backups catching up",
        )),
        "ha-catch-up-bytes" => Some((
            "tandem_ha_catch_up_bytes_total",
            "Message bytes sent to backups catching up",
        )),
        "ha-catch-up-kept" => Some((
            "tandem_ha_catch_up_kept_messages_total",
            "Messages backups catching up already held, so were not sent",
        )),
        "ha-consumed-not-sent" => Some((
            "tandem_ha_consumed_not_sent_messages_total",
            "Messages consumed before they were sent to a lagging backup, so never sent",
        )),
        "ha-promotions" => Some((
            "tandem_ha_promotions_total",
            "Times this broker became primary (a promotion or fail-over to it)",
        )),
        "ha-step-downs" => Some((
            "tandem_ha_step_downs_total",
            "Times this broker stepped down as primary on finding a newer one",
        )),
        "ha-consumed-not-sent-bytes" => Some((
            "tandem_ha_consumed_not_sent_bytes_total",
            "Bytes of messages consumed before they were sent to a lagging backup",
        )),
        _ => None,
    };
    match known {
        Some((metric, help)) => (metric.to_owned(), help.to_owned()),
        None => (
            format!("tandem_{}_total", name.replace('-', "_")),
            format!("The broker's {name} counter"),
        ),
    }
}

fn saturating(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The metric families of one scrape, in the order first set.
#[derive(Default)]
struct Metrics {
    families: Vec<Family>,
}

struct Family {
    name: String,
    help: String,
    kind: MetricType,
    labels: Vec<&'static str>,
    samples: Vec<(Vec<String>, Sample)>,
}

enum Sample {
    Number(f64),
    Histogram(Histogram),
}

impl Metrics {
    fn gauge(&mut self, name: &str, help: &str, labels: &[&'static str], values: &[&str], v: i64) {
        self.float_gauge(name, help, labels, values, v as f64);
    }

    fn float_gauge(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&'static str],
        values: &[&str],
        v: f64,
    ) {
        self.add(
            MetricType::GAUGE,
            name,
            help,
            labels,
            values,
            Sample::Number(v),
        );
    }

    fn counter(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&'static str],
        values: &[&str],
        v: u64,
    ) {
        self.add(
            MetricType::COUNTER,
            name,
            help,
            labels,
            values,
            Sample::Number(v as f64),
        );
    }

    fn histogram(&mut self, name: &str, help: &str, h: Histogram) {
        self.add(
            MetricType::HISTOGRAM,
            name,
            help,
            &[],
            &[],
            Sample::Histogram(h),
        );
    }

    fn add(
        &mut self,
        kind: MetricType,
        name: &str,
        help: &str,
        labels: &[&'static str],
        values: &[&str],
        sample: Sample,
    ) {
        let at = match self.families.iter().position(|f| f.name == name) {
            Some(at) => at,
            None => {
                self.families.push(Family {
                    name: name.to_owned(),
                    help: help.to_owned(),
                    kind,
                    labels: labels.to_vec(),
                    samples: Vec::new(),
                });
                self.families.len() - 1
            }
        };
        let values = values.iter().map(|v| v.to_string()).collect();
        self.families[at].samples.push((values, sample));
    }

    /// The text format, through the `prometheus` crate's encoder (which
    /// checks the families, escapes label values and writes HELP and TYPE).
    fn encode(self) -> Result<String, String> {
        let families: Vec<MetricFamily> = self.families.into_iter().map(family).collect();
        TextEncoder::new()
            .encode_to_string(&families)
            .map_err(|e| format!("encoding metrics: {e}"))
    }
}

fn family(f: Family) -> MetricFamily {
    let mut mf = MetricFamily::default();
    mf.set_name(f.name);
    mf.set_help(f.help);
    mf.set_field_type(f.kind);
    for (values, sample) in f.samples {
        let labels = f
            .labels
            .iter()
            .zip(values)
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name(name.to_string());
                pair.set_value(value);
                pair
            })
            .collect();
        let mut m = Metric::from_label(labels);
        match (f.kind, sample) {
            (MetricType::COUNTER, Sample::Number(v)) => {
                let mut c = proto::Counter::default();
                c.set_value(v);
                m.set_counter(c);
            }
            (_, Sample::Number(v)) => {
                let mut g = proto::Gauge::default();
                g.set_value(v);
                m.set_gauge(g);
            }
            (_, Sample::Histogram(h)) => m.set_histogram(histogram(&h)),
        }
        mf.mut_metric().push(m);
    }
    mf
}

/// Cumulative buckets of a shard-side histogram (the `+Inf` one is implied
/// by the count).
fn histogram(h: &Histogram) -> proto::Histogram {
    let mut out = proto::Histogram::default();
    let mut cumulative = 0;
    let buckets = HOLD_BOUNDS
        .iter()
        .zip(h.counts.iter())
        .map(|(bound, n)| {
            cumulative += n;
            let mut b = proto::Bucket::default();
            b.set_upper_bound(*bound);
            b.set_cumulative_count(cumulative);
            b
        })
        .collect();
    out.set_bucket(buckets);
    out.set_sample_count(h.count);
    out.set_sample_sum(h.sum_seconds);
    out
}

#[cfg(test)]
mod tests;
