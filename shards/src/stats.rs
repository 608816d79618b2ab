//! A read-only view of a running broker's counters for threads outside the
//! executors (a metrics exporter, say). Each shard publishes a snapshot of its
//! counters from its housekeeping task every [`PUBLISH_EVERY`]; a reader copies
//! the latest one of each shard. The data path never touches it: a shard takes
//! its slot's lock only to swap in a new snapshot, a reader only to clone an
//! `Arc`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::queue::QueueStats;

/// Counters an exchange keeps on each shard that routes through it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExchangeStats {
    pub routed: u64,
    pub dropped: u64,
}

/// One connection, as management reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionInfo {
    pub shard: usize,
    pub id: u64,
    pub address: String,
    pub user: Option<String>,
    pub container: String,
    /// What it moved so far.
    pub moved: ConnectionTotals,
}

/// What a shard's connections moved, summed: those that closed (kept so that
/// a shard's totals only grow), or all of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionTotals {
    pub frames_in: u64,
    pub frames_out: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl ConnectionTotals {
    pub fn add(&mut self, more: &ConnectionTotals) {
        self.frames_in += more.frames_in;
        self.frames_out += more.frames_out;
        self.messages_in += more.messages_in;
        self.messages_out += more.messages_out;
        self.bytes_in += more.bytes_in;
        self.bytes_out += more.bytes_out;
    }
}

/// Upper bounds (seconds) of [`Histogram`]'s buckets: 100 µs to 10 s.
pub const HOLD_BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Durations counted into the buckets of [`HOLD_BOUNDS`] (the last count is
/// for longer ones), with their sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Per bucket, not cumulative; one more than the bounds.
    pub counts: [u64; HOLD_BOUNDS.len() + 1],
    pub sum_seconds: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let at = HOLD_BOUNDS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(HOLD_BOUNDS.len());
        self.counts[at] += 1;
        self.sum_seconds += s;
        self.count += 1;
    }

    pub fn add(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.sum_seconds += other.sum_seconds;
        self.count += other.count;
    }
}

/// A labelled gauge an extension reports for metrics (a backup's lag, say).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// What one shard reports to a statistics gather.
#[derive(Debug, Clone, Default)]
pub struct ShardReport {
    pub queues: Vec<(Arc<str>, QueueStats)>,
    pub exchanges: Vec<(Arc<str>, ExchangeStats)>,
    pub connections: Vec<ConnectionInfo>,
    /// The extension's counters (e.g. the store's journal writes), summed
    /// over the shards into the broker's attributes.
    pub counters: Vec<(&'static str, u64)>,
    /// Polls over `stall-threshold`, and the longest poll ([`crate::stall`]).
    pub stalls: crate::stall::StallFigures,
    /// What connections that closed on this shard had moved.
    pub closed: ConnectionTotals,
    /// How long publishes to this shard's queues waited for their
    /// settlement holders (the backups, the journal): from stored to
    /// released.
    pub hold_times: Histogram,
    /// The extension's facts about the broker (e.g. its HA status and
    /// epoch, on the shard that knows them).
    pub facts: Vec<(&'static str, String)>,
    /// The extension's labelled gauges (HA: each backup's lag and status).
    pub series: Vec<Series>,
}

impl ShardReport {
    /// Everything this shard's connections moved: the closed ones and the
    /// live ones.
    pub fn connection_totals(&self) -> ConnectionTotals {
        let mut all = self.closed;
        for c in &self.connections {
            all.add(&c.moved);
        }
        all
    }
}

impl ShardReport {
    /// Adds another shard's counters to these, by name.
    pub fn add_counters(&mut self, more: &[(&'static str, u64)]) {
        for (name, n) in more {
            match self.counters.iter_mut().find(|(k, _)| k == name) {
                Some((_, total)) => *total += n,
                None => self.counters.push((name, *n)),
            }
        }
    }
}

/// How often each shard publishes a snapshot (at the latest, when busy).
pub const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// One shard's counters at one moment.
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    pub shard: usize,
    /// When the shard took it (its clock).
    pub taken: Instant,
    /// How long the shard has run.
    pub uptime: Duration,
    /// Queues it owns, exchanges routed through it, connections it serves.
    pub report: ShardReport,
    /// Its rings to the other shards: (to, messages waiting, capacity).
    /// Filled by the runtime, which owns the rings.
    pub rings: Vec<(usize, usize, usize)>,
}

/// The counters of every shard, as last published. Cheap to clone; hand it
/// to any thread.
#[derive(Debug, Clone)]
pub struct StatsHandle {
    slots: Arc<[Mutex<Option<Arc<ShardSnapshot>>>]>,
}

impl StatsHandle {
    /// Slots for `shards` shards, none published yet.
    pub fn new(shards: usize) -> StatsHandle {
        StatsHandle {
            slots: (0..shards).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// A shard publishes its latest snapshot.
    pub fn publish(&self, snapshot: ShardSnapshot) {
        if let Some(slot) = self.slots.get(snapshot.shard) {
            let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            *slot = Some(Arc::new(snapshot));
        }
    }

    /// The latest snapshot of every shard (`None` for one that has not
    /// published yet).
    pub fn shards(&self) -> Vec<Option<Arc<ShardSnapshot>>> {
        self.slots
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// Messages queued on `queue`, from its owner's latest snapshot.
    pub fn queue_depth(&self, queue: &str) -> Option<u64> {
        self.shards().into_iter().flatten().find_map(|s| {
            s.report
                .queues
                .iter()
                .find(|(n, _)| &**n == queue)
                .map(|(_, q)| q.depth)
        })
    }

    /// Connections served, summed over the shards' latest snapshots.
    pub fn connections(&self) -> usize {
        self.shards()
            .into_iter()
            .flatten()
            .map(|s| s.report.connections.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_see_each_shards_latest_snapshot() {
        let stats = StatsHandle::new(2);
        assert!(stats.shards().iter().all(Option::is_none));
        let snapshot = |shard, depth| ShardSnapshot {
            shard,
            taken: Instant::now(),
            uptime: Duration::ZERO,
            rings: Vec::new(),
            report: ShardReport {
                queues: vec![(
                    "q".into(),
                    QueueStats {
                        depth,
                        ..Default::default()
                    },
                )],
                ..Default::default()
            },
        };
        stats.publish(snapshot(1, 3));
        assert_eq!(stats.queue_depth("q"), Some(3));
        stats.publish(snapshot(1, 5));
        assert_eq!(stats.queue_depth("q"), Some(5));
        assert_eq!(stats.queue_depth("other"), None);
        // A shard that does not exist publishes nowhere.
        stats.publish(snapshot(7, 1));
        assert_eq!(stats.shards().len(), 2);
    }
}
