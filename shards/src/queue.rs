//! A FIFO queue as its owning shard keeps it: messages by position, consumers
//! with credit, browsers with cursors, limits and what to do when they are hit.
//! No I/O here: the shard turns [`Delivery`]s and released acks into ring messages.

use std::collections::{BTreeMap, VecDeque};

use hashbrown::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::amqp::connection::LinkKey;

/// What a full queue does with one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitPolicy {
    /// Hold the message (and the publisher's settlement and credit) until there is room.
    Flow,
    /// Reject it with `amqp:resource-limit-exceeded`.
    Reject,
    /// Drop the oldest available message to make room.
    Ring,
}

impl LimitPolicy {
    pub fn parse(s: &str) -> Option<LimitPolicy> {
        match s {
            "flow" | "flow-to-disk" | "flow-stop" => Some(LimitPolicy::Flow),
            "reject" => Some(LimitPolicy::Reject),
            "ring" => Some(LimitPolicy::Ring),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LimitPolicy::Flow => "flow",
            LimitPolicy::Reject => "reject",
            LimitPolicy::Ring => "ring",
        }
    }
}

/// How a queue was declared.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    /// Bytes; 0 is unlimited.
    pub max_size: u64,
    /// Messages; 0 is unlimited.
    pub max_count: u64,
    pub policy: LimitPolicy,
    pub durable: bool,
    /// Deleted when its last consumer goes (subscription and temporary queues).
    pub auto_delete: bool,
    /// `qpid.replicate`, stored for the HA issue.
    pub replicate: Option<String>,
    /// Last-value queue: a new message replaces the available one with the same
    /// value of this application property.
    pub lvq_key: Option<String>,
    /// `replica-of`: the broker URL this queue replicates from (queue
    /// replication between brokers that are not one cluster); its messages
    /// come only from there, so local sends and consumes are refused.
    pub replica_of: Option<String>,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            max_size: 0,
            max_count: 0,
            policy: LimitPolicy::Flow,
            durable: false,
            auto_delete: false,
            replicate: None,
            lvq_key: None,
            replica_of: None,
        }
    }
}

/// A consuming or browsing link, wherever it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConsumerRef {
    pub shard: usize,
    pub conn: u64,
    pub link: LinkKey,
}

/// Where to report that a publish was stored: the publisher's shard and its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckTo {
    pub shard: usize,
    pub token: u64,
}

/// A message handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub consumer: ConsumerRef,
    pub position: u64,
    pub message: Bytes,
    /// Earlier unsuccessful deliveries of this message.
    pub delivery_count: u32,
    /// Sent pre-settled: the queue already forgot it (or it was only browsed).
    pub settled: bool,
}

/// How a consumer ended a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Accepted or rejected: the message leaves the queue.
    Consumed,
    /// Released without a delivery attempt counted.
    Released,
    /// Released after a failed attempt (modified with delivery-failed, or the
    /// consumer went away holding it).
    Failed,
}

struct Entry {
    message: Bytes,
    delivery_count: u32,
}

struct Consumer {
    who: ConsumerRef,
    credit: u32,
    browse: bool,
    /// Deliveries go out pre-settled (the receiver asked for at-most-once).
    settled: bool,
    /// Browsers: the next position to look at.
    cursor: u64,
}

/// Counters the management node reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub depth: u64,
    pub bytes: u64,
    pub enqueues: u64,
    pub dequeues: u64,
    pub acquired: u64,
    pub consumers: u64,
    pub redeliveries: u64,
    pub held: u64,
    /// Stored messages whose publisher's settlement waits for the settlement
    /// holders (backups not yet acknowledged, the disk); set by the shard.
    pub awaiting_settlement: u64,
    pub ring_dropped: u64,
    pub lvq_replaced: u64,
    /// The position of the newest message it ever stored (0: none).
    pub last_position: u64,
}

pub enum EnqueueOutcome {
    /// Stored at this position; ack the publisher now (or when replicas have it).
    Stored(u64),
    /// Held until there is room; its ack comes later from [`Queue::admit_held`].
    Held,
    /// Refused (policy reject).
    Rejected,
}

pub struct Queue {
    pub name: Arc<str>,
    pub settings: QueueSettings,
    next_position: u64,
    available: BTreeMap<u64, Entry>,
    acquired: HashMap<u64, (Entry, ConsumerRef)>,
    held: VecDeque<(Bytes, Option<AckTo>)>,
    consumers: Vec<Consumer>,
    /// Round-robin start among consumers.
    next_consumer: usize,
    bytes: u64,
    stats: QueueStats,
    /// Set once a consumer has attached: auto-delete waits for the first one.
    had_consumer: bool,
    /// Last-value queues: key value -> position of the available message holding it.
    lvq_index: HashMap<String, u64>,
    /// Replicated queues on a primary record what left them, for the backups.
    track_dequeues: bool,
    dequeued: Vec<u64>,
    /// With `track_dequeues`: positions whose delivery count grew, and to what.
    redelivered: Vec<(u64, u32)>,
}

impl Queue {
    pub fn new(name: Arc<str>, settings: QueueSettings) -> Queue {
        Queue {
            name,
            settings,
            next_position: 1,
            available: BTreeMap::new(),
            acquired: HashMap::new(),
            held: VecDeque::new(),
            consumers: Vec::new(),
            next_consumer: 0,
            bytes: 0,
            stats: QueueStats::default(),
            had_consumer: false,
            lvq_index: HashMap::new(),
            track_dequeues: false,
            dequeued: Vec::new(),
            redelivered: Vec::new(),
        }
    }

    fn depth(&self) -> u64 {
        (self.available.len() + self.acquired.len()) as u64
    }

    fn is_full_for(&self, size: u64) -> bool {
        let s = &self.settings;
        (s.max_count > 0 && self.depth() >= s.max_count)
            || (s.max_size > 0 && self.bytes + size > s.max_size && self.depth() > 0)
    }

    /// Message bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn stats(&self) -> QueueStats {
        QueueStats {
            depth: self.depth(),
            bytes: self.bytes,
            acquired: self.acquired.len() as u64,
            consumers: self.consumers.len() as u64,
            held: self.held.len() as u64,
            last_position: self.next_position.saturating_sub(1),
            ..self.stats
        }
    }

    /// Offers a message. Under the flow policy a full queue holds it, with its ack.
    pub fn enqueue(&mut self, message: Bytes, ack: Option<AckTo>) -> EnqueueOutcome {
        let size = message.len() as u64;
        if let Some(key) = self.lvq_value(&message) {
            // A last-value queue replaces rather than grows, so limits do not apply
            // to a replacement.
            if let Some(old) = self.lvq_index.get(&key).copied() {
                if let Some(prev) = self.available.remove(&old) {
                    self.bytes -= prev.message.len() as u64;
                    self.stats.lvq_replaced += 1;
                    self.stats.dequeues += 1;
                    self.note_dequeue(old);
                    let position = self.store(message);
                    self.lvq_index.insert(key, position);
                    return EnqueueOutcome::Stored(position);
                }
            }
            if self.held.is_empty() && !self.is_full_for(size) {
                let position = self.store(message);
                self.lvq_index.insert(key, position);
                return EnqueueOutcome::Stored(position);
            }
        }
        if !self.held.is_empty() || self.is_full_for(size) {
            match self.settings.policy {
                LimitPolicy::Flow => {
                    self.held.push_back((message, ack));
                    return EnqueueOutcome::Held;
                }
                LimitPolicy::Reject => return EnqueueOutcome::Rejected,
                LimitPolicy::Ring => {
                    while self.is_full_for(size) {
                        let Some((position, oldest)) = self.available.pop_first() else {
                            break;
                        };
                        self.bytes -= oldest.message.len() as u64;
                        self.stats.ring_dropped += 1;
                        self.stats.dequeues += 1;
                        self.note_dequeue(position);
                    }
                }
            }
        }
        EnqueueOutcome::Stored(self.store(message))
    }

    /// The last-value key of a message, for last-value queues.
    fn lvq_value(&self, message: &Bytes) -> Option<String> {
        let key = self.settings.lvq_key.as_deref()?;
        let map = crate::amqp::message::scan(message).ok()?;
        let props = crate::amqp::message::application_properties(message, &map).ok()??;
        let v = props.map_get(key)?;
        Some(match v.as_str() {
            Some(s) => s.to_owned(),
            None => format!("{v:?}"),
        })
    }

    fn store(&mut self, message: Bytes) -> u64 {
        self.bytes += message.len() as u64;
        self.stats.enqueues += 1;
        let position = self.next_position;
        self.next_position += 1;
        self.available.insert(
            position,
            Entry {
                message,
                delivery_count: 0,
            },
        );
        position
    }

    /// Moves held messages into the queue while there is room: each with its
    /// ack, the position it got, and its bytes (for replication).
    pub fn admit_held(&mut self, admitted: &mut Vec<(Option<AckTo>, u64, Bytes)>) {
        while let Some((message, _)) = self.held.front() {
            if self.is_full_for(message.len() as u64) {
                break;
            }
            let Some((message, ack)) = self.held.pop_front() else {
                break;
            };
            let position = self.store(message.clone());
            admitted.push((ack, position, message));
        }
    }

    // -- replication

    /// Records dequeued positions from now on (for the replication stream).
    pub fn track_dequeues(&mut self, on: bool) {
        self.track_dequeues = on;
        if !on {
            self.dequeued.clear();
            self.redelivered.clear();
        }
    }

    fn note_dequeue(&mut self, position: u64) {
        if self.track_dequeues {
            self.dequeued.push(position);
        }
    }

    /// Positions that left the queue since the last call.
    pub fn take_dequeued(&mut self, out: &mut Vec<u64>) {
        out.append(&mut self.dequeued);
    }

    /// Positions whose delivery count grew since the last call, with the
    /// count.
    pub fn take_redelivered(&mut self) -> Vec<(u64, u32)> {
        std::mem::take(&mut self.redelivered)
    }

    /// A recovered message's delivery count.
    pub fn set_delivery_count(&mut self, position: u64, count: u32) {
        if let Some(e) = self.available.get_mut(&position) {
            e.delivery_count = count;
        }
    }

    /// The position the next message will get.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }

    /// Messages from now on get positions from `floor` on, at least.
    pub fn raise_next_position(&mut self, floor: u64) {
        self.next_position = self.next_position.max(floor);
    }

    /// The positions of every message in the queue (available or acquired),
    /// in order.
    pub fn positions(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self
            .available
            .keys()
            .chain(self.acquired.keys())
            .copied()
            .collect();
        all.sort_unstable();
        all
    }

    /// Every message in the queue (available or acquired), in position order.
    pub fn snapshot(&self) -> Vec<(u64, Bytes)> {
        let mut all: Vec<(u64, Bytes)> = self
            .available
            .iter()
            .map(|(p, e)| (*p, e.message.clone()))
            .chain(
                self.acquired
                    .iter()
                    .map(|(p, (e, _))| (*p, e.message.clone())),
            )
            .collect();
        all.sort_unstable_by_key(|(p, _)| *p);
        all
    }

    /// A backup stores a replicated message at the primary's position (a
    /// duplicate position is ignored: a snapshot may resend what we have).
    /// Whether it was new.
    pub fn insert_at(&mut self, position: u64, message: Bytes) -> bool {
        if self.available.contains_key(&position) || self.acquired.contains_key(&position) {
            return false;
        }
        if let Some(key) = self.lvq_value(&message) {
            self.lvq_index.insert(key, position);
        }
        self.bytes += message.len() as u64;
        self.stats.enqueues += 1;
        self.next_position = self.next_position.max(position + 1);
        self.available.insert(
            position,
            Entry {
                message,
                delivery_count: 0,
            },
        );
        true
    }

    /// The message at `position`, available or acquired, and its delivery
    /// count (the store rewrites live messages of an old journal segment from
    /// here).
    pub fn message_at(&self, position: u64) -> Option<(Bytes, u32)> {
        self.available
            .get(&position)
            .or_else(|| self.acquired.get(&position).map(|(e, _)| e))
            .map(|e| (e.message.clone(), e.delivery_count))
    }

    /// A backup removes a message the primary dequeued.
    pub fn remove_at(&mut self, position: u64) {
        let removed = self
            .available
            .remove(&position)
            .or_else(|| self.acquired.remove(&position).map(|(e, _)| e));
        if let Some(e) = removed {
            self.bytes -= e.message.len() as u64;
            self.stats.dequeues += 1;
            self.note_dequeue(position);
        }
    }

    /// Whether the message at `position` is available (stored, not with a
    /// consumer).
    pub fn is_available(&self, position: u64) -> bool {
        self.available.contains_key(&position)
    }

    /// Removes the message at `position` if it is available (not with a
    /// consumer); whether it was.
    pub fn remove_available(&mut self, position: u64) -> bool {
        if !self.is_available(position) {
            return false;
        }
        self.remove_at(position);
        true
    }

    /// Drops every message (a backup about to receive a fresh snapshot).
    pub fn purge(&mut self) {
        if self.track_dequeues {
            let all: Vec<u64> = self
                .available
                .keys()
                .chain(self.acquired.keys())
                .copied()
                .collect();
            self.dequeued.extend(all);
        }
        self.available.clear();
        self.acquired.clear();
        self.lvq_index.clear();
        self.bytes = 0;
    }

    pub fn subscribe(&mut self, who: ConsumerRef, browse: bool, settled: bool) {
        self.had_consumer = true;
        self.consumers.push(Consumer {
            who,
            credit: 0,
            browse,
            settled,
            cursor: 0,
        });
    }

    /// Adds credit; with `drain`, returns the credit left unused after dispatching
    /// (the consumer's shard uses it to complete the drain).
    pub fn add_credit(
        &mut self,
        who: ConsumerRef,
        credit: u32,
        drain: bool,
        out: &mut Vec<Delivery>,
    ) -> Option<u32> {
        self.grant(who, credit);
        self.dispatch(out);
        if drain {
            let c = self.consumers.iter_mut().find(|c| c.who == who)?;
            let left = c.credit;
            c.credit = 0;
            return Some(left);
        }
        None
    }

    /// Adds `credit` to consumer `who`, dispatching nothing yet.
    pub fn grant(&mut self, who: ConsumerRef, credit: u32) {
        if let Some(c) = self.consumers.iter_mut().find(|c| c.who == who) {
            c.credit = c.credit.saturating_add(credit);
        }
    }

    /// Hands available messages to consumers with credit (round robin), and lets
    /// browsers see what they have not seen.
    pub fn dispatch(&mut self, out: &mut Vec<Delivery>) {
        self.dispatch_up_to(out, usize::MAX);
    }

    /// [`Queue::dispatch`], stopping once `out` holds `limit` deliveries;
    /// [`Queue::could_dispatch`] then says whether more are waiting.
    pub fn dispatch_up_to(&mut self, out: &mut Vec<Delivery>, limit: usize) {
        for c in self
            .consumers
            .iter_mut()
            .filter(|c| c.browse && c.credit > 0)
        {
            for (pos, e) in self.available.range(c.cursor..) {
                if c.credit == 0 || out.len() >= limit {
                    break;
                }
                c.credit -= 1;
                c.cursor = pos + 1;
                out.push(Delivery {
                    consumer: c.who,
                    position: *pos,
                    message: e.message.clone(),
                    delivery_count: e.delivery_count,
                    settled: true,
                });
            }
        }
        let n = self.consumers.len();
        while !self.available.is_empty() && out.len() < limit {
            let pick = (0..n)
                .map(|i| (self.next_consumer + i) % n)
                .find(|&i| !self.consumers[i].browse && self.consumers[i].credit > 0);
            let Some(i) = pick else {
                break;
            };
            self.next_consumer = (i + 1) % n;
            let Some((position, entry)) = self.available.pop_first() else {
                break;
            };
            let c = &mut self.consumers[i];
            c.credit -= 1;
            out.push(Delivery {
                consumer: c.who,
                position,
                message: entry.message.clone(),
                delivery_count: entry.delivery_count,
                settled: c.settled,
            });
            if c.settled {
                self.bytes -= entry.message.len() as u64;
                self.stats.dequeues += 1;
                if self.track_dequeues {
                    self.dequeued.push(position);
                }
            } else {
                self.acquired.insert(position, (entry, c.who));
            }
        }
    }

    /// Whether a dispatch would hand out anything: a consumer with credit and
    /// a message for it.
    pub fn could_dispatch(&self) -> bool {
        self.consumers.iter().any(|c| {
            c.credit > 0
                && if c.browse {
                    self.available.range(c.cursor..).next().is_some()
                } else {
                    !self.available.is_empty()
                }
        })
    }

    /// A consumer settled (or gave back) a delivery.
    pub fn settle(&mut self, who: ConsumerRef, position: u64, how: Settlement) {
        match self.acquired.get(&position) {
            Some((_, owner)) if *owner == who => {}
            _ => return, // browsed, pre-settled, or already given back
        }
        let Some((mut entry, _)) = self.acquired.remove(&position) else {
            return;
        };
        match how {
            Settlement::Consumed => {
                self.bytes -= entry.message.len() as u64;
                self.stats.dequeues += 1;
                self.note_dequeue(position);
            }
            Settlement::Released => {
                self.available.insert(position, entry);
            }
            Settlement::Failed => {
                entry.delivery_count += 1;
                self.stats.redeliveries += 1;
                if self.track_dequeues {
                    self.redelivered.push((position, entry.delivery_count));
                }
                self.available.insert(position, entry);
            }
        }
    }

    /// A consumer went away. `delivered` are the positions its client actually
    /// received: those count a failed attempt; anything else it held (in flight)
    /// goes back untouched. Returns true when an auto-delete queue should go.
    pub fn unsubscribe(&mut self, who: ConsumerRef, delivered: &[u64]) -> bool {
        self.consumers.retain(|c| c.who != who);
        if self.next_consumer >= self.consumers.len() {
            self.next_consumer = 0;
        }
        let mine: Vec<u64> = self
            .acquired
            .iter()
            .filter(|(_, (_, owner))| *owner == who)
            .map(|(p, _)| *p)
            .collect();
        for position in mine {
            let how = if delivered.contains(&position) {
                Settlement::Failed
            } else {
                Settlement::Released
            };
            self.settle(who, position, how);
        }
        self.settings.auto_delete && self.had_consumer && self.consumers.is_empty()
    }

    /// Everything held back for publishers (when the queue is deleted).
    pub fn drain_held(&mut self) -> Vec<AckTo> {
        self.held.drain(..).filter_map(|(_, ack)| ack).collect()
    }

    /// Consumers of this queue (to tell them when it is deleted).
    pub fn consumer_refs(&self) -> Vec<ConsumerRef> {
        self.consumers.iter().map(|c| c.who).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(n: u32) -> ConsumerRef {
        ConsumerRef {
            shard: 0,
            conn: 1,
            link: LinkKey {
                channel: 0,
                handle: n,
            },
        }
    }

    fn msg(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn competing_consumers_share_round_robin() {
        let mut q = Queue::new("q".into(), QueueSettings::default());
        for i in 0..4 {
            q.enqueue(msg(&i.to_string()), None);
        }
        q.subscribe(who(1), false, false);
        q.subscribe(who(2), false, false);
        let mut out = Vec::new();
        q.add_credit(who(1), 10, false, &mut out);
        q.add_credit(who(2), 10, false, &mut out);
        assert_eq!(out.len(), 4);
        // The first consumer got credit first, so it took everything; both then
        // share new messages round robin.
        out.clear();
        q.enqueue(msg("a"), None);
        q.enqueue(msg("b"), None);
        q.dispatch(&mut out);
        let owners: Vec<u32> = out.iter().map(|d| d.consumer.link.handle).collect();
        assert!(owners.contains(&1) && owners.contains(&2), "{owners:?}");
    }

    #[test]
    fn a_bounded_dispatch_stops_at_its_limit_and_says_more_is_waiting() {
        let mut q = Queue::new("q".into(), QueueSettings::default());
        for i in 0..10 {
            q.enqueue(msg(&i.to_string()), None);
        }
        q.subscribe(who(1), false, false);
        q.subscribe(who(2), true, false); // a browser
        assert!(!q.could_dispatch(), "no credit yet");
        q.grant(who(1), 100);
        q.grant(who(2), 100);
        assert!(q.could_dispatch());
        let mut out = Vec::new();
        let mut batches = 0;
        while q.could_dispatch() {
            let before = out.len();
            q.dispatch_up_to(&mut out, before + 4);
            assert!(out.len() - before <= 4, "a batch is at most the limit");
            batches += 1;
            assert!(batches < 20, "dispatch makes no progress");
        }
        // The browser saw all ten, the consumer took all ten, each once and
        // in order.
        let seen = |h: u32| -> Vec<u64> {
            out.iter()
                .filter(|d| d.consumer.link.handle == h)
                .map(|d| d.position)
                .collect()
        };
        assert_eq!(seen(2), (1..=10).collect::<Vec<_>>());
        assert_eq!(seen(1), (1..=10).collect::<Vec<_>>());
        assert_eq!(batches, 5);
    }

    #[test]
    fn unsettled_return_in_order_with_count() {
        let mut q = Queue::new("q".into(), QueueSettings::default());
        for i in 0..3 {
            q.enqueue(msg(&i.to_string()), None);
        }
        q.subscribe(who(1), false, false);
        let mut out = Vec::new();
        q.add_credit(who(1), 3, false, &mut out);
        let delivered: Vec<u64> = out.iter().map(|d| d.position).collect();
        q.settle(who(1), delivered[0], Settlement::Consumed);
        q.unsubscribe(who(1), &delivered);
        q.subscribe(who(2), false, false);
        out.clear();
        q.add_credit(who(2), 10, false, &mut out);
        let bodies: Vec<&[u8]> = out.iter().map(|d| &d.message[..]).collect();
        assert_eq!(bodies, vec![&b"1"[..], &b"2"[..]]);
        assert!(out.iter().all(|d| d.delivery_count == 1));
    }

    #[test]
    fn full_queue_holds_then_admits_in_order() {
        let mut q = Queue::new(
            "q".into(),
            QueueSettings {
                max_count: 2,
                ..Default::default()
            },
        );
        let ack = |t| Some(AckTo { shard: 0, token: t });
        assert!(matches!(
            q.enqueue(msg("1"), ack(1)),
            EnqueueOutcome::Stored(1)
        ));
        assert!(matches!(
            q.enqueue(msg("2"), ack(2)),
            EnqueueOutcome::Stored(2)
        ));
        assert!(matches!(q.enqueue(msg("3"), ack(3)), EnqueueOutcome::Held));
        assert!(matches!(q.enqueue(msg("4"), ack(4)), EnqueueOutcome::Held));
        q.subscribe(who(1), false, false);
        let mut out = Vec::new();
        q.add_credit(who(1), 1, false, &mut out);
        q.settle(who(1), out[0].position, Settlement::Consumed);
        let mut admitted = Vec::new();
        q.admit_held(&mut admitted);
        assert_eq!(admitted.len(), 1);
        assert_eq!(admitted[0].0, Some(AckTo { shard: 0, token: 3 }));
        assert_eq!(admitted[0].1, 3);
        assert_eq!(q.stats().depth, 2);
    }

    #[test]
    fn ring_drops_oldest() {
        let mut q = Queue::new(
            "q".into(),
            QueueSettings {
                max_count: 2,
                policy: LimitPolicy::Ring,
                ..Default::default()
            },
        );
        for s in ["a", "b", "c"] {
            q.enqueue(msg(s), None);
        }
        q.subscribe(who(1), false, true);
        let mut out = Vec::new();
        q.add_credit(who(1), 10, false, &mut out);
        let bodies: Vec<&[u8]> = out.iter().map(|d| &d.message[..]).collect();
        assert_eq!(bodies, vec![&b"b"[..], &b"c"[..]]);
    }

    #[test]
    fn last_value_queue_keeps_the_latest_per_key() {
        use crate::amqp::codec::Value;
        use crate::amqp::message::MessageBuilder;
        let mut q = Queue::new(
            "lvq".into(),
            QueueSettings {
                lvq_key: Some("sym".into()),
                ..Default::default()
            },
        );
        let m = |sym: &str, px: i32| {
            MessageBuilder {
                application_properties: vec![("sym".into(), Value::string(sym))],
                body: Some(Value::Int(px)),
                ..Default::default()
            }
            .encode()
        };
        q.enqueue(m("A", 1), None);
        q.enqueue(m("B", 1), None);
        q.enqueue(m("A", 2), None);
        assert_eq!(q.stats().depth, 2);
        assert_eq!(q.stats().lvq_replaced, 1);
        q.subscribe(who(1), false, true);
        let mut out = Vec::new();
        q.add_credit(who(1), 10, false, &mut out);
        let bodies: Vec<_> = out
            .iter()
            .map(|d| {
                crate::amqp::message::DecodedMessage::decode(&d.message)
                    .expect("decodes")
                    .body
            })
            .collect();
        assert_eq!(bodies, vec![Some(Value::Int(1)), Some(Value::Int(2))]);
    }

    #[test]
    fn browser_sees_without_taking() {
        let mut q = Queue::new("q".into(), QueueSettings::default());
        q.enqueue(msg("a"), None);
        q.subscribe(who(1), true, true);
        let mut out = Vec::new();
        q.add_credit(who(1), 5, false, &mut out);
        assert_eq!(out.len(), 1);
        // (browsing leaves the message for the consumer below)
        q.subscribe(who(2), false, false);
        out.clear();
        q.add_credit(who(2), 5, false, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].consumer, who(2));
    }
}
