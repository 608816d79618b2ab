//! The consuming end of a link: the harness's receivers (client side) and, with
//! `--null`, the in-process sink the senders talk to (server side). It grants
//! `window` credit and tops it up when half is used, settles each read's
//! deliveries in one range, reads every message's stamp into a
//! [`SequenceTracker`] and, for latency runs, a histogram.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tandem_shards::amqp::connection::{Connection, Event};
use tandem_shards::amqp::performative::{DeliveryState, Role as LinkRole};

use crate::cpu;
use crate::message::{ns_since_epoch, read_stamp};
use crate::progress::Progress;
use crate::sequence::{Arrival, SequenceTracker};
use crate::wire::{LinkSetup, LinkState, Next, Role, Setup};

/// How often a receiver checks whether the run is over.
const DONE_POLL: Duration = Duration::from_millis(10);
/// How often a client waiting for the start looks again.
const START_POLL: Duration = Duration::from_millis(1);
/// Largest latency the histogram holds (larger ones are recorded as this).
pub(crate) const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// An empty latency histogram, in nanoseconds up to [`MAX_LATENCY_NS`].
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("constant histogram bounds are valid")
}

/// When a consumer is finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// A harness receiver: when every message fed to the receivers arrived.
    AllFed,
    /// The `--null` sink: when its peer closes the connection.
    PeerCloses,
}

/// What one consumer does.
#[derive(Debug, Clone)]
pub struct ConsumerPlan {
    /// The run whose messages count; others are foreign.
    pub run: u32,
    /// Body bytes per message (where the stamp is).
    pub size: usize,
    /// Credit granted, topped up when half is used.
    pub window: u32,
    /// Ask the peer to send pre-settled.
    pub presettled: bool,
    /// Record end-to-end latency.
    pub latency: bool,
    pub until: Until,
    /// No senders in this run (`--senders 0`): drain what the queue holds,
    /// counting every message whatever run sent it.
    pub drain: bool,
    /// Give up when nothing arrives for this long.
    pub idle_timeout: Duration,
}

/// What one consumer saw.
#[derive(Debug, Clone)]
pub struct ConsumerStats {
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Without a stamp we can read.
    pub unreadable: u64,
    /// Stamped by another run (left on the queue earlier).
    pub foreign: u64,
    pub seen: SequenceTracker,
    /// End-to-end latency in nanoseconds (latency runs).
    pub latency: Option<Histogram<u64>>,
    pub last_arrival: Option<Instant>,
    /// CPU of its thread from the start to the finish.
    pub cpu: Duration,
    pub error: Option<String>,
}

pub struct Consumer {
    plan: ConsumerPlan,
    setup: LinkSetup,
    progress: Arc<Progress>,
    stats: ConsumerStats,
    /// Deliveries of the current read still to settle (first, last).
    unsettled: Option<(u32, u32)>,
    /// Messages since credit was last granted.
    since_grant: u32,
    /// New messages of this run in the current read, for the shared count.
    this_read: u64,
    started: Option<(Instant, Duration)>,
    said_ready: bool,
    done: bool,
}

impl Consumer {
    /// A client receiver attaching to `address`.
    pub fn client(
        plan: ConsumerPlan,
        address: &str,
        name: &str,
        progress: Arc<Progress>,
    ) -> Consumer {
        let setup = LinkSetup::client(LinkRole::Receiver, address, name, plan.presettled);
        Consumer::new(plan, setup, progress)
    }

    /// The server side: receives on whatever sending link the peer attaches.
    pub fn server(plan: ConsumerPlan, progress: Arc<Progress>) -> Consumer {
        Consumer::new(plan, LinkSetup::server(), progress)
    }

    fn new(plan: ConsumerPlan, setup: LinkSetup, progress: Arc<Progress>) -> Consumer {
        let latency = plan.latency.then(latency_histogram);
        Consumer {
            plan,
            setup,
            progress,
            stats: ConsumerStats {
                received: 0,
                duplicates: 0,
                out_of_order: 0,
                unreadable: 0,
                foreign: 0,
                seen: SequenceTracker::default(),
                latency,
                last_arrival: None,
                cpu: Duration::ZERO,
                error: None,
            },
            unsettled: None,
            since_grant: 0,
            this_read: 0,
            started: None,
            said_ready: false,
            done: false,
        }
    }

    pub fn into_stats(self) -> ConsumerStats {
        self.stats
    }

    fn is_client(&self) -> bool {
        self.plan.until == Until::AllFed
    }

    fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some((_, cpu_then)) = self.started {
            self.stats.cpu = cpu::thread_cpu().saturating_sub(cpu_then);
        }
    }

    fn fail(&mut self, why: String) {
        if self.done {
            return;
        }
        self.stats.error = Some(why);
        self.progress.abort();
        self.finish();
    }

    /// The link or connection went away: the end of a sink's work; for a
    /// receiver, fine only when everything has arrived already (and not because
    /// a failed run stopped counting).
    fn on_down(&mut self, why: String) {
        if !self.is_client() || (self.progress.all_received() && !self.progress.aborted()) {
            self.finish();
        } else {
            self.fail(why);
        }
    }

    fn on_transfer(&mut self, delivery_id: u32, settled: bool, payload: &[u8], now: Instant) {
        self.since_grant += 1;
        match read_stamp(payload, self.plan.size) {
            Some(stamp) if stamp.run != self.plan.run => {
                self.stats.foreign += 1;
                if self.plan.drain {
                    self.stats.received += 1;
                    self.this_read += 1;
                }
            }
            Some(stamp) => {
                self.stats.received += 1;
                match self.stats.seen.record(stamp.producer, stamp.seq) {
                    Arrival::InOrder => self.this_read += 1,
                    Arrival::OutOfOrder => {
                        self.this_read += 1;
                        self.stats.out_of_order += 1
                    }
                    Arrival::Duplicate => self.stats.duplicates += 1,
                    Arrival::Unreadable => self.stats.unreadable += 1,
                }
                if let Some(h) = &mut self.stats.latency {
                    let ns = ns_since_epoch(now).saturating_sub(stamp.sent_ns);
                    h.saturating_record(ns.clamp(1, MAX_LATENCY_NS));
                }
            }
            None => self.stats.unreadable += 1,
        }
        if !settled {
            self.unsettled = Some(match self.unsettled {
                None => (delivery_id, delivery_id),
                Some((first, _)) => (first, delivery_id),
            });
        }
    }
}

impl Role for Consumer {
    fn on_event(&mut self, conn: &mut Connection, event: Event, now: Instant) {
        match self.setup.on_event(conn, event) {
            Setup::Up(link) => {
                conn.grant_credit(link, self.plan.window, false);
                self.since_grant = 0;
            }
            Setup::Nothing => {}
            Setup::Down(why) => self.on_down(why),
            Setup::Other(Event::Transfer {
                delivery_id,
                settled,
                payload,
                ..
            }) => self.on_transfer(delivery_id, settled, &payload, now),
            Setup::Other(_) => {}
        }
    }

    fn after_input(&mut self, conn: &mut Connection, now: Instant) {
        if let Some((first, last)) = self.unsettled.take() {
            // The peer's deliveries on this session are numbered consecutively,
            // and this session has only our link: one range settles the read.
            if let Some(link) = self.setup.link() {
                conn.disposition(
                    link.channel,
                    LinkRole::Receiver,
                    first,
                    last,
                    true,
                    Some(&DeliveryState::Accepted),
                );
            }
        }
        if let Some(link) = self.setup.link() {
            if self.since_grant >= self.plan.window.div_ceil(2) {
                conn.grant_credit(link, self.plan.window, false);
                self.since_grant = 0;
            }
        }
        if self.this_read > 0 {
            self.stats.last_arrival = Some(now);
            if self.is_client() {
                self.progress.arrived(self.this_read, now);
            }
            self.this_read = 0;
        }
    }

    fn fill(&mut self, _conn: &mut Connection, now: Instant) -> Next {
        if self.done {
            return Next::Done;
        }
        if self.progress.aborted() && self.is_client() {
            self.finish();
            return Next::Done;
        }
        match &self.setup.state {
            LinkState::Pending => return Next::At(now + DONE_POLL * 10),
            LinkState::Down(why) => {
                let why = why.clone();
                self.on_down(why);
                return Next::Done;
            }
            LinkState::Up(_) => {}
        }
        if self.is_client() && !self.said_ready {
            self.said_ready = true;
            self.progress.client_ready();
        }
        let Some(start) = self.progress.started() else {
            return Next::At(now + START_POLL);
        };
        if self.started.is_none() {
            self.started = Some((start, cpu::thread_cpu()));
        }
        if !self.is_client() {
            return Next::At(now + DONE_POLL * 10);
        }
        if self.progress.all_received() {
            self.finish();
            return Next::Done;
        }
        let last = self.progress.last_arrival().unwrap_or(start).max(start);
        if now.duration_since(last) > self.plan.idle_timeout {
            let (received, fed) = self.progress.counts();
            let expected = if fed > 0 {
                format!("{received} of {fed} delivered so far")
            } else {
                format!("{received} so far")
            };
            self.fail(format!(
                "nothing arrived for {:?} ({expected})",
                self.plan.idle_timeout
            ));
            return Next::Done;
        }
        Next::At(now + DONE_POLL)
    }

    fn lost(&mut self, why: String) {
        self.on_down(why);
    }
}
