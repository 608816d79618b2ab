//! The producing end of a link: the harness's senders (client side) and, with
//! `--null`, the in-process source that feeds the harness's receivers (server
//! side). It keeps `window` unsettled messages in flight (at-least-once), sends
//! pre-settled without limit but credit, and with a rate paces sends to a
//! schedule. Each message is the template with its stamp patched in.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tandem_shards::amqp::connection::{Connection, Event};
use tandem_shards::amqp::performative::{DeliveryState, Role as LinkRole};

use crate::consumer::{latency_histogram, MAX_LATENCY_NS};
use crate::cpu;
use crate::message::{ns_since_epoch, Template};
use crate::progress::Progress;
use crate::wire::{LinkSetup, LinkState, Next, Role, Setup};

/// Output queued on the engine before the writer gets a turn: large enough to
/// batch, small enough to keep reads and writes interleaved.
const BATCH_BYTES: usize = 256 * 1024;
/// Pacing sleeps no shorter than this; messages due sooner go in the same
/// batch. (An executor park and wake costs tens of µs of CPU on a VM, so a wake
/// per message at high rates would make the harness compete with the broker.)
const MIN_PACE_SLEEP: Duration = Duration::from_micros(200);
/// How often a client waiting for the start looks again.
const START_POLL: Duration = Duration::from_millis(1);

/// What one producer does.
#[derive(Debug, Clone)]
pub struct ProducerPlan {
    /// Written into every message, so receivers can tell runs apart.
    pub run: u32,
    /// Written into every message, so receivers can tell producers apart.
    pub id: u32,
    /// Messages to send (`None`: until `duration` is over).
    pub quota: Option<u64>,
    pub duration: Option<Duration>,
    /// Body bytes per message.
    pub size: usize,
    pub durable: bool,
    /// Unsettled messages in flight (at-least-once).
    pub window: u32,
    pub presettled: bool,
    /// Messages per second (`None`: as fast as possible).
    pub rate: Option<f64>,
    /// Its messages are what the run's receivers wait for.
    pub feeds_receivers: bool,
    /// Give up after this long without progress.
    pub idle_timeout: Duration,
}

/// What one producer did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProducerStats {
    pub id: u32,
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// Released or modified: the broker did not take them.
    pub released: u64,
    /// When the last message was settled (or, pre-settled, written).
    #[serde(skip)]
    pub finished: Option<Instant>,
    /// CPU of its thread from the start to the finish.
    #[serde(skip)]
    pub cpu: Duration,
    /// How far behind its schedule it sent at worst (with a rate).
    #[serde(skip)]
    pub max_lag: Duration,
    /// At-least-once: each message's time from being handed to the engine to
    /// its settlement (nanoseconds).
    #[serde(skip)]
    pub settle_latency: Option<Histogram<u64>>,
    pub error: Option<String>,
}

impl ProducerStats {
    /// Messages that got through: accepted, or all sent when pre-settled.
    pub fn delivered(&self, presettled: bool) -> u64 {
        if presettled {
            self.sent
        } else {
            self.accepted
        }
    }
}

pub struct Producer {
    plan: ProducerPlan,
    setup: LinkSetup,
    progress: Arc<Progress>,
    template: Template,
    stats: ProducerStats,
    in_flight: u64,
    /// At-least-once: when each unsettled delivery was sent (`None` once
    /// settled), from delivery id `sent_base` on.
    sent_at: VecDeque<Option<Instant>>,
    sent_base: u32,
    /// Our own note of the run's start (and CPU then), once we saw it.
    started: Option<(Instant, Duration)>,
    last_progress: Instant,
    /// A harness client (counted among those the start waits for), not a
    /// `--null` peer.
    client: bool,
    said_ready: bool,
    done: bool,
}

impl Producer {
    /// A client sender attaching to `address`.
    pub fn client(
        plan: ProducerPlan,
        address: &str,
        name: &str,
        progress: Arc<Progress>,
    ) -> Producer {
        let setup = LinkSetup::client(LinkRole::Sender, address, name, plan.presettled);
        Producer::new(plan, setup, progress, true)
    }

    /// The server side: sends on whatever receiving link the peer attaches.
    pub fn server(plan: ProducerPlan, progress: Arc<Progress>) -> Producer {
        Producer::new(plan, LinkSetup::server(), progress, false)
    }

    fn new(
        plan: ProducerPlan,
        setup: LinkSetup,
        progress: Arc<Progress>,
        client: bool,
    ) -> Producer {
        Producer {
            template: Template::new(plan.run, plan.id, plan.size, plan.durable),
            stats: ProducerStats {
                id: plan.id,
                settle_latency: (!plan.presettled).then(latency_histogram),
                ..Default::default()
            },
            plan,
            setup,
            progress,
            in_flight: 0,
            sent_at: VecDeque::new(),
            sent_base: 0,
            started: None,
            last_progress: Instant::now(),
            client,
            said_ready: false,
            done: false,
        }
    }

    pub fn into_stats(self) -> ProducerStats {
        self.stats
    }

    fn finish(&mut self, now: Instant) {
        if self.done {
            return;
        }
        self.done = true;
        self.stats.finished = Some(now);
        if let Some((_, cpu_then)) = self.started {
            self.stats.cpu = cpu::thread_cpu().saturating_sub(cpu_then);
        }
        if self.plan.feeds_receivers {
            self.progress
                .feeder_finished(self.stats.delivered(self.plan.presettled));
        }
    }

    fn fail(&mut self, why: String, now: Instant) {
        if self.done {
            return;
        }
        self.stats.error = Some(why);
        self.progress.abort();
        self.finish(now);
    }

    fn sending_over(&self, now: Instant, start: Instant) -> bool {
        self.plan.quota.is_some_and(|q| self.stats.sent >= q)
            || self.plan.duration.is_some_and(|d| now >= start + d)
    }

    fn on_disposition(
        &mut self,
        first: u32,
        last: u32,
        state: Option<&DeliveryState>,
        now: Instant,
    ) {
        let n = u64::from(last.wrapping_sub(first)) + 1;
        self.settled_at(first, last, now);
        match state {
            None | Some(DeliveryState::Accepted) => self.stats.accepted += n,
            Some(DeliveryState::Rejected(_)) => self.stats.rejected += n,
            Some(DeliveryState::Released) | Some(DeliveryState::Modified { .. }) => {
                self.stats.released += n
            }
            // Not an outcome; a settled one says nothing more.
            Some(DeliveryState::Received { .. }) => self.stats.accepted += n,
        }
        self.in_flight = self.in_flight.saturating_sub(n);
        self.last_progress = now;
    }

    /// Deliveries `first..=last` were settled at `now`: their publish→settle
    /// times go in the histogram.
    fn settled_at(&mut self, first: u32, last: u32, now: Instant) {
        let Some(h) = self.stats.settle_latency.as_mut() else {
            return;
        };
        let mut id = first;
        loop {
            let at = id.wrapping_sub(self.sent_base) as usize;
            if let Some(sent) = self.sent_at.get_mut(at).and_then(Option::take) {
                let ns = u64::try_from((now - sent).as_nanos()).unwrap_or(u64::MAX);
                h.saturating_record(ns.clamp(1, MAX_LATENCY_NS));
            }
            if id == last {
                break;
            }
            id = id.wrapping_add(1);
        }
        while self.sent_at.front().is_some_and(Option::is_none) {
            self.sent_at.pop_front();
            self.sent_base = self.sent_base.wrapping_add(1);
        }
    }

    /// Sends what window, credit, schedule and batch size allow; returns when
    /// the next message falls due, if pacing is what stopped it.
    fn send_batch(
        &mut self,
        conn: &mut Connection,
        now: Instant,
        start: Instant,
    ) -> Option<Instant> {
        let link = self.setup.link()?;
        let now_ns = ns_since_epoch(now);
        let deadline = self.plan.duration.map(|d| start + d);
        loop {
            if self.plan.quota.is_some_and(|q| self.stats.sent >= q)
                || deadline.is_some_and(|d| now >= d)
                || (!self.plan.presettled && self.in_flight >= u64::from(self.plan.window))
            {
                return None;
            }
            // Paced, a message carries the time it was due, not the time it
            // went out: a sender held back (by its window, or the broker)
            // shows as latency instead of hiding it (coordinated omission).
            let mut stamp_ns = now_ns;
            if let Some(rate) = self.plan.rate {
                let due = start + Duration::from_secs_f64(self.stats.sent as f64 / rate);
                if due > now {
                    return Some(due);
                }
                self.stats.max_lag = self.stats.max_lag.max(now - due);
                stamp_ns = ns_since_epoch(due);
            }
            let seq = self.stats.sent;
            let message = self.template.stamp(seq, stamp_ns);
            // `None` without credit: stop here; the peer's flow wakes us.
            let id = conn.send(link, &seq.to_be_bytes(), message, self.plan.presettled)?;
            self.stats.sent += 1;
            if self.plan.presettled {
                self.last_progress = now;
            } else {
                self.in_flight += 1;
                if self.sent_at.is_empty() {
                    self.sent_base = id;
                }
                self.sent_at.push_back(Some(now));
            }
            if conn.output().len() >= BATCH_BYTES {
                return Some(now); // write this batch, then come straight back
            }
        }
    }
}

impl Role for Producer {
    fn on_event(&mut self, conn: &mut Connection, event: Event, now: Instant) {
        match self.setup.on_event(conn, event) {
            Setup::Up(_) | Setup::Nothing => {}
            Setup::Down(why) => self.fail(why, now),
            Setup::Other(Event::Disposition { disposition, .. })
                if disposition.role == LinkRole::Receiver && disposition.settled =>
            {
                let last = disposition.last.unwrap_or(disposition.first);
                self.on_disposition(disposition.first, last, disposition.state.as_ref(), now);
            }
            Setup::Other(_) => {}
        }
    }

    fn after_input(&mut self, _conn: &mut Connection, _now: Instant) {}

    fn fill(&mut self, conn: &mut Connection, now: Instant) -> Next {
        if self.done {
            return Next::Done;
        }
        if self.progress.aborted() {
            self.finish(now);
            return Next::Done;
        }
        match &self.setup.state {
            LinkState::Pending => return Next::At(now + self.plan.idle_timeout),
            LinkState::Down(why) => {
                let why = why.clone();
                self.fail(why, now);
                return Next::Done;
            }
            LinkState::Up(_) => {}
        }
        if self.client && !self.said_ready {
            self.said_ready = true;
            self.progress.client_ready();
        }
        let Some(start) = self.progress.started() else {
            return Next::At(now + START_POLL);
        };
        if self.started.is_none() {
            self.started = Some((start, cpu::thread_cpu()));
            self.last_progress = now;
        }
        let due = self.send_batch(conn, now, start);
        if self.sending_over(now, start) && self.in_flight == 0 {
            if conn.has_output() {
                return Next::At(now); // finish once the last batch is written
            }
            self.finish(now);
            return Next::Done;
        }
        if now.duration_since(self.last_progress) > self.plan.idle_timeout {
            let why = if self.in_flight > 0 {
                format!(
                    "no settlement for {:?} with {} messages unsettled",
                    self.plan.idle_timeout, self.in_flight
                )
            } else {
                format!("no credit from the peer for {:?}", self.plan.idle_timeout)
            };
            self.fail(why, now);
            return Next::Done;
        }
        let mut next = now + Duration::from_millis(100);
        if let Some(due) = due {
            next = next.min(due.max(now + MIN_PACE_SLEEP));
        }
        if let Some(end) = self
            .plan
            .duration
            .map(|d| start + d)
            .filter(|end| *end > now)
        {
            next = next.min(end);
        }
        Next::At(next)
    }

    fn lost(&mut self, why: String) {
        self.fail(why, Instant::now());
    }
}
