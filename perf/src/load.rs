//! One load run: senders and receivers, each its own connection on its own
//! pinned executor, started together once every link is attached, then their
//! statistics gathered into a [`RunResult`].
//!
//! Clients are laid out receiver, sender, receiver, sender... round robin over
//! the cores, so with 1 + 1 on two cores each has a core (shared with the
//! broker, which is the point of measuring CPU per message too). With `--null`
//! each client's peer goes on the next core.

use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::ExecutorJoinHandle;
use hdrhistogram::Histogram;
use tandem_shards::amqp::connection::Connection;
use tandem_shards::url::BrokerUrl;

use crate::consumer::{Consumer, ConsumerPlan, ConsumerStats, Until};
use crate::cpu::{self, PidSample};
use crate::executors;
use crate::null_sink::{self, Peer, PeerStats, RunningPeer};
use crate::producer::{Producer, ProducerPlan, ProducerStats};
use crate::progress::Progress;
use crate::report::{CpuFigures, LatencyFigures, RunResult};
use crate::sequence::SequenceTracker;
use crate::wire::{self, Role};

/// How long a client may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the start waits for every link to attach.
const ATTACH_DEADLINE: Duration = Duration::from_secs(20);
/// How often the coordinator looks at the clients while they attach.
const READY_POLL: Duration = Duration::from_millis(1);

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub url: BrokerUrl,
    pub address: String,
    /// Queues the load is spread over (see [`LoadPlan::address_of`]).
    pub queues: u32,
    pub senders: u32,
    pub receivers: u32,
    /// Total messages over all senders (`None`: for `duration`).
    pub messages: Option<u64>,
    pub duration: Option<Duration>,
    pub size: usize,
    pub window: u32,
    pub presettled: bool,
    pub durable: bool,
    /// Total messages per second over all senders (`None`: flat out).
    pub rate: Option<f64>,
    /// Record latency histograms.
    pub latency: bool,
    /// Against in-process peers instead of `url`.
    pub null: bool,
    pub idle_timeout: Duration,
    pub broker_pids: Vec<u32>,
}

impl LoadPlan {
    /// The node sender or receiver `i` uses: the address itself, or with
    /// several queues `ADDRESS-(i mod queues)`.
    pub fn address_of(&self, i: u32) -> String {
        queue_name(&self.address, self.queues, i)
    }
}

/// Queue `i mod queues` of a run over `queues` queues named after `address`.
pub fn queue_name(address: &str, queues: u32, i: u32) -> String {
    if queues <= 1 {
        address.to_owned()
    } else {
        format!("{address}-{}", i % queues)
    }
}

/// What the threads of a run handed back.
struct Outcome {
    start: Option<Instant>,
    producers: Vec<ProducerStats>,
    consumers: Vec<ConsumerStats>,
    sinks: Vec<ConsumerStats>,
    sources: Vec<ProducerStats>,
    process_cpu: Duration,
    broker_cpu: Option<Duration>,
    errors: Vec<String>,
}

/// `total` split over `n` parts, the first ones taking the remainder.
fn share(total: u64, n: u32, i: u32) -> u64 {
    let n = u64::from(n.max(1));
    total / n + u64::from(u64::from(i) < total % n)
}

enum Client {
    Sender(ExecutorJoinHandle<ProducerStats>),
    Receiver(ExecutorJoinHandle<ConsumerStats>),
}

/// A finished run: its figures, and the merged latency histogram (ns).
pub struct Run {
    pub result: RunResult,
    pub latency: Option<Histogram<u64>>,
}

/// Runs `plan` and sums it up (`command` names it in the report); `Err` only
/// when the run could not be set up at all.
pub fn run(plan: &LoadPlan, command: &'static str, notes: Vec<String>) -> Result<Run, String> {
    let outcome = execute(plan)?;
    Ok(summarize(plan, command, outcome, notes))
}

fn execute(plan: &LoadPlan) -> Result<Outcome, String> {
    let cores = executors::cores();
    let run_id = crate::message::new_run_id();
    let feeders = if plan.null {
        plan.receivers
    } else {
        plan.senders
    };
    let progress = Arc::new(Progress::new(feeders as usize));
    if plan.senders == 0 && !plan.null {
        // Draining: the messages to wait for are already on the queue.
        progress.expect(plan.messages.unwrap_or(0));
    }
    let plans = Plans { plan, run_id };
    let mut clients = Vec::new();
    let mut peers: Vec<RunningPeer> = Vec::new();
    let mut slot = 0usize;
    let mut spawned = Ok(());
    for i in 0..plan.senders.max(plan.receivers) {
        for sender in [false, true] {
            let exists = if sender {
                i < plan.senders
            } else {
                i < plan.receivers
            };
            if !exists || spawned.is_err() {
                continue;
            }
            let core = executors::core_for(&cores, slot);
            let peer_core = executors::core_for(&cores, slot + 1);
            slot += 1;
            spawned = spawn_client(&plans, sender, i, (core, peer_core), &progress, &mut peers)
                .map(|c| clients.push(c));
        }
    }

    let mut errors = Vec::new();
    if let Err(e) = spawned {
        progress.abort();
        errors.push(e);
    }
    let wanted = (plan.senders + plan.receivers) as usize;
    let deadline = Instant::now() + ATTACH_DEADLINE;
    while progress.ready_count() < wanted && !progress.aborted() {
        if Instant::now() >= deadline {
            errors.push(format!(
                "only {} of {wanted} clients attached within {ATTACH_DEADLINE:?}",
                progress.ready_count()
            ));
            progress.abort();
            break;
        }
        std::thread::sleep(READY_POLL); // poll: bounded by the deadline above
    }
    let start = (!progress.aborted()).then(Instant::now);
    let pids_before = PidSample::take(&plan.broker_pids);
    let cpu_before = cpu::process_cpu();
    if let Some(start) = start {
        progress.go(start);
    }

    let mut outcome = Outcome {
        start,
        producers: Vec::new(),
        consumers: Vec::new(),
        sinks: Vec::new(),
        sources: Vec::new(),
        process_cpu: Duration::ZERO,
        broker_cpu: None,
        errors,
    };
    for c in clients {
        let joined = match c {
            Client::Sender(h) => h.join().map(|s| outcome.producers.push(s)),
            Client::Receiver(h) => h.join().map(|s| outcome.consumers.push(s)),
        };
        if let Err(e) = joined {
            outcome.errors.push(format!("a client thread failed: {e}"));
        }
    }
    outcome.process_cpu = cpu::process_cpu().saturating_sub(cpu_before);
    outcome.broker_cpu = PidSample::take(&plan.broker_pids).since(&pids_before);
    for p in peers {
        match p.handle.join() {
            Ok(Some(PeerStats::Sink(s))) => outcome.sinks.push(s),
            Ok(Some(PeerStats::Source(s))) => outcome.sources.push(s),
            Ok(None) => {}
            Err(e) => outcome.errors.push(format!("a --null peer failed: {e}")),
        }
    }
    Ok(outcome)
}

/// Builds each client's plan from the run's.
struct Plans<'a> {
    plan: &'a LoadPlan,
    run_id: u32,
}

impl Plans<'_> {
    /// Producer `id` of `of`; `feeds`: the receivers wait for its messages.
    fn producer(&self, id: u32, of: u32, feeds: bool) -> ProducerPlan {
        let plan = self.plan;
        ProducerPlan {
            run: self.run_id,
            id,
            quota: plan.messages.map(|m| share(m, of, id)),
            duration: plan.duration,
            size: plan.size,
            durable: plan.durable,
            window: plan.window,
            presettled: plan.presettled,
            rate: plan.rate.map(|r| r / f64::from(of.max(1))),
            feeds_receivers: feeds,
            idle_timeout: plan.idle_timeout,
        }
    }

    fn consumer(&self, until: Until) -> ConsumerPlan {
        let plan = self.plan;
        ConsumerPlan {
            run: self.run_id,
            size: plan.size,
            window: plan.window.max(1),
            presettled: plan.presettled,
            latency: plan.latency,
            until,
            drain: plan.senders == 0 && !plan.null,
            idle_timeout: plan.idle_timeout,
        }
    }
}

/// Starts sender or receiver `i` on `cores.0` (and with `--null` its peer on
/// `cores.1`).
fn spawn_client(
    plans: &Plans,
    sender: bool,
    i: u32,
    cores: (Option<usize>, Option<usize>),
    progress: &Arc<Progress>,
    peers: &mut Vec<RunningPeer>,
) -> Result<Client, String> {
    let plan = plans.plan;
    let mut url = plan.url.clone();
    if plan.null {
        let (peer, kind) = if sender {
            let sink = Consumer::server(plans.consumer(Until::PeerCloses), progress.clone());
            (Peer::Sink(sink), "sink")
        } else {
            let feeds = plans.producer(i, plan.receivers, true);
            (
                Peer::Source(Producer::server(feeds, progress.clone())),
                "source",
            )
        };
        let running = null_sink::start(
            peer,
            cores.1,
            format!("perf-null-{kind}-{i}"),
            progress.clone(),
        )?;
        url = running
            .url
            .parse()
            .map_err(|e| format!("--null peer address: {e}"))?;
        peers.push(running);
    }
    let address = plan.address_of(i);
    if sender {
        let name = format!("sender-{i}");
        let producer = plans.producer(i, plan.senders, !plan.null);
        let role = Producer::client(producer, &address, &name, progress.clone());
        executors::spawn(format!("perf-{name}"), cores.0, move || async move {
            connect_and_drive(url, name, role).await.into_stats()
        })
        .map(Client::Sender)
    } else {
        let name = format!("receiver-{i}");
        let role = Consumer::client(
            plans.consumer(Until::AllFed),
            &address,
            &name,
            progress.clone(),
        );
        executors::spawn(format!("perf-{name}"), cores.0, move || async move {
            connect_and_drive(url, name, role).await.into_stats()
        })
        .map(Client::Receiver)
    }
}

async fn connect_and_drive<R: Role + 'static>(url: BrokerUrl, name: String, mut role: R) -> R {
    match wire::connect(&url, CONNECT_TIMEOUT).await {
        Ok((stream, host, transport)) => {
            let conn = Connection::client(wire::client_config(&url, host, &name), Instant::now());
            wire::drive(stream, conn, role, transport).await
        }
        Err(e) => {
            role.lost(e);
            role
        }
    }
}

/// Seconds from the start to the latest of `ends`.
fn seconds_until(start: Option<Instant>, ends: impl Iterator<Item = Option<Instant>>) -> f64 {
    let (Some(start), Some(end)) = (start, ends.flatten().max()) else {
        return 0.0;
    };
    end.saturating_duration_since(start).as_secs_f64()
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn summarize(plan: &LoadPlan, command: &'static str, o: Outcome, notes: Vec<String>) -> Run {
    let mut errors = o.errors;
    for p in &o.producers {
        if let Some(e) = &p.error {
            errors.push(format!("sender {}: {e}", p.id));
        }
    }
    for (i, c) in o.consumers.iter().enumerate() {
        if let Some(e) = &c.error {
            errors.push(format!("receiver {i}: {e}"));
        }
    }
    for (i, s) in o.sources.iter().enumerate() {
        if let Some(e) = &s.error {
            errors.push(format!("null source {i}: {e}"));
        }
    }
    let sum_p = |f: fn(&ProducerStats) -> u64| o.producers.iter().map(f).sum::<u64>();
    let sum_c = |f: fn(&ConsumerStats) -> u64| o.consumers.iter().map(f).sum::<u64>();
    let (sent, received) = (sum_p(|p| p.sent), sum_c(|c| c.received));
    let (accepted, rejected, released) = (
        sum_p(|p| p.accepted),
        sum_p(|p| p.rejected),
        sum_p(|p| p.released),
    );
    let unsettled = if plan.presettled {
        0
    } else {
        sent.saturating_sub(accepted + rejected + released)
    };

    let mut seen = SequenceTracker::default();
    let mut duplicates = sum_c(|c| c.duplicates);
    for c in &o.consumers {
        duplicates += seen.merge(&c.seen);
    }
    let feeders = if plan.null { &o.sources } else { &o.producers };
    let delivered: Vec<(u32, u64)> = feeders
        .iter()
        .map(|p| (p.id, p.delivered(plan.presettled)))
        .collect();
    let missing = if plan.receivers > 0 {
        seen.missing(&delivered)
    } else {
        0
    };

    let send_seconds = seconds_until(o.start, o.producers.iter().map(|p| p.finished));
    let receive_seconds = seconds_until(o.start, o.consumers.iter().map(|c| c.last_arrival));
    let sent_rate = rate(sent, send_seconds);
    let received_rate = rate(received, receive_seconds);
    let mb = |r: f64| r * plan.size as f64 / 1e6;

    let sender_cpu: Duration = o.producers.iter().map(|p| p.cpu).sum();
    let receiver_cpu: Duration = o.consumers.iter().map(|c| c.cpu).sum();
    let sink_cpu: Duration = o.sinks.iter().map(|c| c.cpu).sum();
    let source_cpu: Duration = o.sources.iter().map(|p| p.cpu).sum();
    let moved = sent.max(received);
    let cpu = CpuFigures {
        harness_us_per_msg: cpu::us_per_message(
            o.process_cpu.saturating_sub(sink_cpu + source_cpu),
            moved,
        ),
        sender_us_per_msg: cpu::us_per_message(sender_cpu, sent),
        receiver_us_per_msg: cpu::us_per_message(receiver_cpu, received),
        broker_us_per_msg: o.broker_cpu.and_then(|c| cpu::us_per_message(c, moved)),
        broker_pids: plan.broker_pids.clone(),
        null_sink_us_per_msg: plan
            .null
            .then(|| cpu::us_per_message(sink_cpu, sent))
            .flatten(),
        null_source_us_per_msg: plan
            .null
            .then(|| cpu::us_per_message(source_cpu, received))
            .flatten(),
    };

    let histogram = merged(o.consumers.iter().filter_map(|c| c.latency.as_ref()));
    let max_lag = o
        .producers
        .iter()
        .map(|p| p.max_lag)
        .max()
        .unwrap_or_default();
    let latency = histogram.as_ref().and_then(|h| figures(h, max_lag));
    let settle_latency = merged(o.producers.iter().filter_map(|p| p.settle_latency.as_ref()))
        .and_then(|h| figures(&h, max_lag));

    let ok =
        o.start.is_some() && errors.is_empty() && missing == 0 && rejected == 0 && released == 0;
    let result = RunResult {
        command,
        url: if plan.null {
            "null".into()
        } else {
            plan.url.redacted()
        },
        address: match plan.queues {
            0 | 1 => plan.address.clone(),
            n => format!("{}-0..{}", plan.address, n - 1),
        },
        null: plan.null,
        senders: plan.senders,
        receivers: plan.receivers,
        size: plan.size,
        window: plan.window,
        settle: if plan.presettled {
            "pre-settled"
        } else {
            "at-least-once"
        },
        durable: plan.durable,
        messages: plan.messages,
        duration_s: plan.duration.map(|d| d.as_secs_f64()),
        rate: plan.rate,
        sent,
        accepted,
        rejected,
        released,
        unsettled,
        received,
        missing,
        duplicates,
        out_of_order: sum_c(|c| c.out_of_order),
        unreadable: sum_c(|c| c.unreadable),
        foreign: sum_c(|c| c.foreign),
        send_seconds,
        receive_seconds,
        sent_msg_per_s: sent_rate,
        sent_mb_per_s: mb(sent_rate),
        received_msg_per_s: received_rate,
        received_mb_per_s: mb(received_rate),
        cpu,
        latency,
        settle_latency,
        broker_stalls: None,
        errors,
        notes,
        started: o.start.is_some(),
        ok,
    };
    Run {
        result,
        latency: histogram,
    }
}

/// The histograms added up (`None` if there are none).
fn merged<'a>(all: impl Iterator<Item = &'a Histogram<u64>>) -> Option<Histogram<u64>> {
    let mut out: Option<Histogram<u64>> = None;
    for h in all {
        match &mut out {
            None => out = Some(h.clone()),
            Some(sum) => {
                let _ = sum.add(h);
            }
        }
    }
    out
}

/// A histogram's figures in microseconds (`None` if it is empty).
pub(crate) fn figures(h: &Histogram<u64>, max_lag: Duration) -> Option<LatencyFigures> {
    if h.is_empty() {
        return None;
    }
    let us = |ns: u64| ns as f64 / 1e3;
    Some(LatencyFigures {
        count: h.len(),
        min_us: us(h.min()),
        mean_us: h.mean() / 1e3,
        p50_us: us(h.value_at_quantile(0.5)),
        p90_us: us(h.value_at_quantile(0.9)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
        max_send_lag_us: max_lag.as_secs_f64() * 1e6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_shared_out_with_the_remainder_first() {
        let parts: Vec<u64> = (0..3).map(|i| share(10, 3, i)).collect();
        assert_eq!(parts, vec![4, 3, 3]);
        assert_eq!(share(5, 1, 0), 5);
    }
}
