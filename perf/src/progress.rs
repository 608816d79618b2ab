//! What the clients of one run share across their threads: the start line, the
//! abort flag, and enough counting for receivers to know when everything that
//! was fed to them has arrived. Atomics only; each client touches them once per
//! batch, not per message.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crate::message::{epoch, ns_since_epoch};

/// Shared state of one run.
pub struct Progress {
    /// Clients connected with their link attached, waiting for the start.
    ready: AtomicUsize,
    /// Set once by the coordinator when every client is ready: ns since epoch + 1
    /// (0: not yet), so one load tells both "started?" and "when?".
    start_ns: AtomicU64,
    /// Some client failed: everyone stops and the run reports it.
    abort: AtomicBool,
    /// Producers whose messages go to the receivers, still running.
    feeders_running: AtomicUsize,
    /// Messages those producers got through: accepted, or sent pre-settled.
    fed: AtomicU64,
    /// Messages the receivers got (each counted once per receiver).
    received: AtomicU64,
    /// When a receiver last got anything (ns since epoch).
    last_arrival_ns: AtomicU64,
}

impl Progress {
    pub fn new(feeders: usize) -> Progress {
        epoch(); // fix the clock origin before any instant of the run is taken
        Progress {
            ready: AtomicUsize::new(0),
            start_ns: AtomicU64::new(0),
            abort: AtomicBool::new(false),
            feeders_running: AtomicUsize::new(feeders),
            fed: AtomicU64::new(0),
            received: AtomicU64::new(0),
            last_arrival_ns: AtomicU64::new(0),
        }
    }

    pub fn client_ready(&self) {
        self.ready.fetch_add(1, Ordering::SeqCst);
    }

    pub fn ready_count(&self) -> usize {
        self.ready.load(Ordering::SeqCst)
    }

    /// Starts the run (the coordinator, once every client is ready).
    pub fn go(&self, at: Instant) {
        self.start_ns
            .store(ns_since_epoch(at) + 1, Ordering::SeqCst);
    }

    /// When the run started, if it has.
    pub fn started(&self) -> Option<Instant> {
        match self.start_ns.load(Ordering::Acquire) {
            0 => None,
            ns => Some(epoch() + std::time::Duration::from_nanos(ns - 1)),
        }
    }

    pub fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
    }

    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    /// A feeding producer finished, having got `delivered` messages through.
    pub fn feeder_finished(&self, delivered: u64) {
        self.fed.fetch_add(delivered, Ordering::SeqCst);
        self.feeders_running.fetch_sub(1, Ordering::SeqCst);
    }

    /// `n` messages are to arrive that no producer of this run feeds (a drain
    /// of what earlier runs left on the queue).
    pub fn expect(&self, n: u64) {
        self.fed.fetch_add(n, Ordering::SeqCst);
    }

    /// Receivers got `n` more messages at `now`.
    pub fn arrived(&self, n: u64, now: Instant) {
        self.received.fetch_add(n, Ordering::SeqCst);
        self.last_arrival_ns
            .fetch_max(ns_since_epoch(now), Ordering::Relaxed);
    }

    /// Every producer is done and everything it got through has arrived.
    pub fn all_received(&self) -> bool {
        self.feeders_running.load(Ordering::SeqCst) == 0
            && self.received.load(Ordering::SeqCst) >= self.fed.load(Ordering::SeqCst)
    }

    /// (received so far, fed so far) for messages.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.received.load(Ordering::SeqCst),
            self.fed.load(Ordering::SeqCst),
        )
    }

    /// When any receiver last got a message (`None`: nothing yet).
    pub fn last_arrival(&self) -> Option<Instant> {
        match self.last_arrival_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(epoch() + std::time::Duration::from_nanos(ns)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receivers_are_done_only_when_feeders_are_done_and_all_arrived() {
        let p = Progress::new(2);
        assert!(p.started().is_none());
        let t = Instant::now();
        p.go(t);
        assert!(p
            .started()
            .is_some_and(|s| s.duration_since(t).as_micros() < 2));
        p.arrived(5, Instant::now());
        p.feeder_finished(3);
        assert!(!p.all_received(), "one feeder still running");
        p.feeder_finished(4);
        assert!(!p.all_received(), "5 of 7 arrived");
        p.arrived(2, Instant::now());
        assert!(p.all_received());
    }
}
