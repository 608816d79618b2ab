//! Replication, as the shards carry it out.
//!
//! On a **primary**:
//! - the shard that hosts a backup's link (`$ha.replication`) forwards the
//!   attach to shard 0, writes the events other shards send it onto the link
//!   within the backup's credit, and turns the backup's settlements of `enq`
//!   deliveries into acknowledgements for the queue owners;
//! - shard 0 registers the backup with the HA role, sends it the replicated
//!   configuration, asks each owner of an `all` queue to start a replica, and
//!   streams later configuration changes;
//! - a queue owner sends a snapshot (`queue-reset` then every message) and then
//!   every enqueue and dequeue, and holds publishers' settlements in its
//!   [`SettlementGuard`] until the guarding backups have the message.
//!
//! On a **backup**, shard 0 owns the outbound link: it applies configuration
//! through its own ordering point, hands messages to the queue owners at the
//! primary's positions, and settles each `enq` once the owner stored it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::catalogue::ConfigEvent;
use super::hooks::{BackupIdentity, HaCommand, LinkEvent};
use super::{ConfigOp, Shard, ShardMsg};
use crate::amqp::codec::Value;
use crate::amqp::connection::LinkKey;
use crate::amqp::performative::{condition, ErrorCondition};
use crate::exchange::BUILT_IN;
use crate::queue::{AckTo, QueueSettings};
use crate::replica::guard::MemberId;
use crate::replica::{Encoded, Event};

/// Where a backup's replication stream is written: its link on some shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaSink {
    pub member: MemberId,
    pub shard: usize,
    pub conn: u64,
    pub link: LinkKey,
}

/// What an `enq` delivery acknowledges when the backup settles it.
pub type EnqueueMeta = Option<(Arc<str>, u64)>;

/// Replication state of a shard (each side uses the parts it needs).
#[derive(Default)]
pub(super) struct ReplicaState {
    /// Owner side: backups streaming each owned queue.
    sinks: HashMap<Arc<str>, Vec<ReplicaSink>>,
    /// Owner side: position a backup must acknowledge to have caught up a queue.
    catch_up: HashMap<(MemberId, Arc<str>), u64>,
    /// Owner side: backups that settlements wait for, so that a queue created
    /// later waits for them too (an expected backup without a link yet has no
    /// stream to start the queue's guard).
    guarded: HashSet<MemberId>,
    /// Shard 0 of a primary: every backup's sink.
    members: Vec<ReplicaSink>,
    /// Shard 0 of a primary: `all` queues each backup has not caught up yet.
    pending_ready: HashMap<MemberId, HashSet<Arc<str>>>,
    /// Backup shard 0: the outbound link's connection and link.
    pub(super) outbound: Option<Outbound>,
    /// Backup shard 0: the connection of the last link that was up when it
    /// was lost (its close may still say that the primary dropped us).
    pub(super) lost_up: Option<u64>,
    /// Backup shard 0: bindings waiting for their queue to be declared.
    stashed_binds: HashMap<String, Vec<Event>>,
    /// Backup shard 0: `enq` events waiting for their owner to store them: the
    /// delivery each belongs to, its queue and position.
    applying: HashMap<u64, Applying>,
    /// Backup shard 0: queues the stream deleted. Their owners' last events may
    /// still follow (they travel on another ring of the primary than the
    /// delete), and are skipped, until the queue is declared again.
    deleted: HashSet<String>,
    /// Link host: replication links with new events, written at the end of the
    /// step so that the events of one step share deliveries.
    to_drain: Vec<(u64, LinkKey)>,
    /// Backup shard 0: deliveries with `enq` events not stored yet (how many).
    unapplied: HashMap<(u16, u32), usize>,
    /// Backup shard 0: deliveries to settle at the end of this step, as ranges.
    to_settle: Vec<(u16, u32)>,
    next_apply: u64,
}

/// An `enq` event a backup handed to the queue's owner to store.
pub(super) struct Applying {
    /// The replication delivery it came in (channel, delivery id).
    delivery: (u16, u32),
    queue: Arc<str>,
    position: u64,
}

/// The backup's outbound replication connection.
pub(super) struct Outbound {
    pub(super) conn: u64,
    pub(super) index: usize,
    pub(super) channel: Option<u16>,
    pub(super) link: Option<LinkKey>,
    /// The peer refused our link and said its status.
    pub(super) refused_status: Option<String>,
    /// The peer accepted our link (so losing it means losing the primary).
    pub(super) up: bool,
}

/// Link-host state of one backup's link on a primary.
pub(super) struct ReplicaLink {
    pub(super) member: Option<MemberId>,
    /// The backup's attach, answered when the HA role accepts it.
    pub(super) pending_attach: Option<Box<crate::amqp::performative::Attach>>,
    /// Events waiting for credit.
    pub(super) backlog: VecDeque<(Encoded, EnqueueMeta)>,
    /// Unsettled deliveries: delivery id -> the queue positions their `enq`
    /// events acknowledge.
    pub(super) unsettled: HashMap<u32, Vec<(Arc<str>, u64)>>,
    pub(super) last_heard: Option<Instant>,
}

/// How much of an object a backup gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    None,
    /// Declared on backups; messages are not copied.
    Configuration,
    All,
}

impl Level {
    fn parse(s: &str) -> Level {
        match s {
            "all" => Level::All,
            "configuration" => Level::Configuration,
            _ => Level::None,
        }
    }
}

/// Credit a backup grants its link, topped up at half.
const LINK_CREDIT: u32 = 1000;
/// Most events, and bytes of events (unless one event is larger), in one
/// replication delivery.
const BATCH_EVENTS: usize = 256;
const BATCH_BYTES: usize = 64 * 1024;

impl Shard {
    /// The replication level of a queue: its own `qpid.replicate`, else the
    /// broker's `ha-replicate`; temporary and auto-delete queues never replicate.
    pub(super) fn queue_level(&self, settings: &QueueSettings) -> Level {
        if settings.auto_delete {
            return Level::None;
        }
        self.level_of(settings.replicate.as_deref())
    }

    /// The level of an exchange; built-in exchanges never replicate.
    fn exchange_level(&self, name: &str, replicate: Option<&str>) -> Level {
        if BUILT_IN.iter().any(|(n, _)| *n == name) {
            return Level::None;
        }
        self.level_of(replicate)
    }

    fn level_of(&self, own: Option<&str>) -> Level {
        match &self.settings.ha_replicate {
            None => Level::None,
            Some(default) => Level::parse(own.unwrap_or(default)),
        }
    }

    // -----------------------------------------------------------------------
    // Owner side (primary)

    /// Sends a new message to the backups streaming `queue`.
    pub(super) fn replicate_enqueue(&mut self, queue: &Arc<str>, position: u64, message: Bytes) {
        if self.replica.sinks.contains_key(queue) {
            let event = Encoded::enqueue(queue, position, message);
            self.stream_to_backups(queue, event, Some((queue.clone(), position)));
        }
    }

    /// Sends what left `queue` to its backups; a publisher waiting for backups to
    /// have a message that was consumed meanwhile is settled now.
    pub(super) fn replicate_dequeues(&mut self, queue: &Arc<str>) {
        let mut gone = Vec::new();
        if let Some(q) = self.queues.get_mut(queue) {
            q.take_dequeued(&mut gone);
        }
        if gone.is_empty() {
            return;
        }
        for &p in &gone {
            if let Some(ack) = self.guard.dequeued(queue, p) {
                self.ack(ack);
            }
        }
        if self.replica.sinks.contains_key(queue) {
            let event = Event::Dequeue {
                queue: queue.to_string(),
                positions: gone,
            };
            self.stream_to_backups(queue, event.encode_parts(), None);
        }
    }

    /// Sends one event to every backup streaming `queue`.
    fn stream_to_backups(&mut self, queue: &Arc<str>, event: Encoded, meta: EnqueueMeta) {
        let sinks = self.replica.sinks.get(queue).cloned().unwrap_or_default();
        for sink in sinks {
            let (event, meta) = (event.clone(), meta.clone());
            self.send(sink.shard, ShardMsg::ReplicaOut { sink, event, meta });
        }
    }

    fn ack(&mut self, ack: AckTo) {
        self.send(
            ack.shard,
            ShardMsg::Ack {
                token: ack.token,
                rejected: None,
            },
        );
    }

    /// Owner: a backup starts replicating `queue`: snapshot, then live events.
    pub(super) fn on_start_replica(&mut self, queue: Arc<str>, sink: ReplicaSink) {
        let Some(q) = self.queues.get_mut(&queue) else {
            // Deleted meanwhile: nothing to catch up.
            self.send(
                0,
                ShardMsg::QueueCaughtUp {
                    member: sink.member,
                    queue,
                },
            );
            return;
        };
        q.track_dequeues(true);
        let next = q.next_position();
        let settings = q.settings.clone();
        let snapshot = q.snapshot();
        self.guard.guard(&queue, sink.member, next);
        let reset = Event::QueueReset {
            name: queue.to_string(),
            settings,
        };
        let last = snapshot.last().map(|(p, _)| *p);
        let enqueues = snapshot.into_iter().map(|(position, message)| {
            (
                Encoded::enqueue(&queue, position, message),
                Some((queue.clone(), position)),
            )
        });
        for (event, meta) in std::iter::once((reset.encode_parts(), None)).chain(enqueues) {
            self.send(sink.shard, ShardMsg::ReplicaOut { sink, event, meta });
        }
        let sinks = self.replica.sinks.entry(queue.clone()).or_default();
        sinks.retain(|s| s.member != sink.member);
        sinks.push(sink);
        match last {
            Some(target) => {
                self.replica.catch_up.insert((sink.member, queue), target);
            }
            None => self.send(
                0,
                ShardMsg::QueueCaughtUp {
                    member: sink.member,
                    queue,
                },
            ),
        }
    }

    /// Owner: a backup has `queue` up to `position`.
    pub(super) fn on_replica_ack(&mut self, queue: Arc<str>, member: MemberId, position: u64) {
        let mut released = Vec::new();
        self.guard.acked(&queue, member, position, &mut released);
        for ack in released {
            self.ack(ack);
        }
        let key = (member, queue);
        if self
            .replica
            .catch_up
            .get(&key)
            .is_some_and(|t| position >= *t)
        {
            self.replica.catch_up.remove(&key);
            let (member, queue) = key;
            self.send(0, ShardMsg::QueueCaughtUp { member, queue });
        }
    }

    /// Owner: settlements on every replicated queue now wait for `member`
    /// (expected backups at promotion, and backups that timed out catching up).
    pub(super) fn on_guard_member(&mut self, member: MemberId) {
        self.replica.guarded.insert(member);
        let names: Vec<Arc<str>> = self.queues.keys().cloned().collect();
        for name in names {
            let level_all = self
                .queues
                .get(&name)
                .is_some_and(|q| self.queue_level(&q.settings) == Level::All);
            if let Some(q) = self.queues.get_mut(&name) {
                if level_all {
                    q.track_dequeues(true);
                    let next = q.next_position();
                    self.guard.guard(&name, member, next);
                }
            }
        }
    }

    /// Every shard: `member` is gone; release what waited for it.
    pub(super) fn on_drop_member(&mut self, member: MemberId) {
        self.replica.guarded.remove(&member);
        let mut released = Vec::new();
        self.guard.drop_backup(member, &mut released);
        for ack in released {
            self.ack(ack);
        }
        for sinks in self.replica.sinks.values_mut() {
            sinks.retain(|s| s.member != member);
        }
        self.replica.catch_up.retain(|(m, _), _| *m != member);
        self.replica.members.retain(|s| s.member != member);
        self.replica.pending_ready.remove(&member);
    }

    /// Owner: a new queue's settlements wait for every guarded backup.
    pub(super) fn guard_new_queue(&mut self, name: &Arc<str>) {
        let Some(q) = self.queues.get(name) else {
            return;
        };
        if self.replica.guarded.is_empty() || self.queue_level(&q.settings) != Level::All {
            return;
        }
        if let Some(q) = self.queues.get_mut(name) {
            q.track_dequeues(true);
            let next = q.next_position();
            for &member in &self.replica.guarded {
                self.guard.guard(name, member, next);
            }
        }
    }

    /// Owner: a replicated queue was deleted; nothing waits for it.
    pub(super) fn forget_replica_queue(&mut self, queue: &str) {
        let mut released = Vec::new();
        self.guard.remove_queue(queue, &mut released);
        for ack in released {
            self.ack(ack);
        }
        self.replica.sinks.remove(queue);
        self.replica.catch_up.retain(|(_, q), _| &**q != queue);
    }

    // -----------------------------------------------------------------------
    // Shard 0 of a primary

    /// A backup attached its link on some shard: register it, send it the
    /// configuration and start every `all` queue's replica.
    pub(super) fn on_backup_attached(&mut self, mut sink: ReplicaSink, who: BackupIdentity) {
        let now = self.now;
        let member = match self.ha.as_mut().map(|ha| ha.backup_attached(who, now)) {
            Some(Ok(m)) => m,
            Some(Err(reason)) => {
                let status = self.ha.as_ref().and_then(|ha| {
                    ha.attributes()
                        .into_iter()
                        .find(|(k, _)| *k == "status")
                        .and_then(|(_, v)| v.as_str().map(str::to_owned))
                });
                self.send(
                    sink.shard,
                    ShardMsg::ReplicaRefused {
                        sink,
                        reason,
                        status,
                    },
                );
                return;
            }
            None => {
                let reason = "this broker is not in an HA cluster".to_string();
                self.send(
                    sink.shard,
                    ShardMsg::ReplicaRefused {
                        sink,
                        reason,
                        status: None,
                    },
                );
                return;
            }
        };
        sink.member = member;
        let epoch = self.ha.as_ref().map(|h| h.identity().epoch).unwrap_or(0);
        self.send(sink.shard, ShardMsg::ReplicaAccepted { sink, epoch });
        self.replica.members.retain(|s| s.member != member);
        self.replica.members.push(sink);
        // Configuration first: exchanges, then queues (owners start `all` ones).
        let mut events = Vec::new();
        let mut exchanges: Vec<_> = self.catalogue.exchanges.values().cloned().collect();
        exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        for ex in &exchanges {
            if self.exchange_level(&ex.name, ex.replicate.as_deref()) != Level::None {
                events.push(Event::Exchange {
                    name: ex.name.to_string(),
                    kind: ex.kind,
                    durable: ex.durable,
                    replicate: ex.replicate.clone(),
                });
            }
        }
        let mut pending = HashSet::new();
        let mut queues: Vec<_> = self
            .catalogue
            .queues
            .iter()
            .map(|(n, e)| (n.clone(), e.clone()))
            .collect();
        queues.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, entry) in &queues {
            match self.queue_level(&entry.settings) {
                Level::All => {
                    pending.insert(name.clone());
                    self.send(
                        entry.owner,
                        ShardMsg::StartReplica {
                            queue: name.clone(),
                            sink,
                        },
                    );
                }
                Level::Configuration => events.push(Event::Queue {
                    name: name.to_string(),
                    settings: entry.settings.clone(),
                }),
                _ => {}
            }
        }
        for ex in &exchanges {
            for b in &ex.bindings {
                let queue_replicated = self
                    .catalogue
                    .queues
                    .get(&b.queue)
                    .is_some_and(|e| self.queue_level(&e.settings) != Level::None);
                if queue_replicated
                    && self.exchange_level(&ex.name, ex.replicate.as_deref()) != Level::None
                {
                    events.push(Event::Bind {
                        exchange: ex.name.to_string(),
                        queue: b.queue.to_string(),
                        key: b.key.clone(),
                    });
                }
            }
        }
        let inventory = Event::Inventory {
            queues: queues
                .iter()
                .filter(|(_, e)| self.queue_level(&e.settings) != Level::None)
                .map(|(n, _)| n.to_string())
                .collect(),
            exchanges: exchanges
                .iter()
                .filter(|ex| self.exchange_level(&ex.name, ex.replicate.as_deref()) != Level::None)
                .map(|ex| ex.name.to_string())
                .collect(),
        };
        events.push(inventory);
        for event in events {
            self.send(
                sink.shard,
                ShardMsg::ReplicaOut {
                    sink,
                    event: event.encode_parts(),
                    meta: None,
                },
            );
        }
        if pending.is_empty() {
            self.ha_link_event(LinkEvent::BackupReady { member });
        } else {
            self.replica.pending_ready.insert(member, pending);
        }
    }

    pub(super) fn on_queue_caught_up(&mut self, member: MemberId, queue: Arc<str>) {
        let done = match self.replica.pending_ready.get_mut(&member) {
            Some(set) => {
                set.remove(&queue);
                set.is_empty()
            }
            None => false,
        };
        if done {
            self.replica.pending_ready.remove(&member);
            self.ha_link_event(LinkEvent::BackupReady { member });
        }
    }

    pub(super) fn ha_link_event(&mut self, event: LinkEvent) {
        let now = self.now;
        if let Some(ha) = self.ha.as_mut() {
            ha.link_event(event, now);
        }
        self.poll_ha(now);
    }

    /// Shard 0 of a primary: configuration changes the backups must see.
    pub(super) fn replicate_config(&mut self, events: &[ConfigEvent]) {
        if self.replica.members.is_empty() {
            return;
        }
        let sinks = self.replica.members.clone();
        for ev in events {
            let out = match ev {
                ConfigEvent::QueueDeclared {
                    name,
                    owner,
                    settings,
                } => match self.queue_level(settings) {
                    Level::All => {
                        for sink in &sinks {
                            self.send(
                                *owner,
                                ShardMsg::StartReplica {
                                    queue: name.clone(),
                                    sink: *sink,
                                },
                            );
                        }
                        None
                    }
                    Level::Configuration => Some(Event::Queue {
                        name: name.to_string(),
                        settings: settings.clone(),
                    }),
                    _ => None,
                },
                ConfigEvent::QueueDeleted { name } => Some(Event::QueueDelete {
                    name: name.to_string(),
                }),
                ConfigEvent::ExchangeDeclared {
                    name,
                    kind,
                    durable,
                    replicate,
                } => (self.exchange_level(name, replicate.as_deref()) != Level::None).then(|| {
                    Event::Exchange {
                        name: name.to_string(),
                        kind: *kind,
                        durable: *durable,
                        replicate: replicate.clone(),
                    }
                }),
                ConfigEvent::ExchangeDeleted { name } => Some(Event::ExchangeDelete {
                    name: name.to_string(),
                }),
                ConfigEvent::Bound { exchange, binding }
                | ConfigEvent::Unbound { exchange, binding } => {
                    let ex_level = self
                        .catalogue
                        .exchanges
                        .get(exchange)
                        .map(|e| {
                            self.exchange_level(exchange, e.replicate.as_deref()) != Level::None
                        })
                        .unwrap_or(false);
                    let q_level = self
                        .catalogue
                        .queues
                        .get(&binding.queue)
                        .is_some_and(|e| self.queue_level(&e.settings) != Level::None);
                    (ex_level && q_level).then(|| {
                        let (exchange, queue, key) = (
                            exchange.to_string(),
                            binding.queue.to_string(),
                            binding.key.clone(),
                        );
                        Event::binding(
                            matches!(ev, ConfigEvent::Bound { .. }),
                            exchange,
                            queue,
                            key,
                        )
                    })
                }
            };
            if let Some(event) = out.as_ref().map(Event::encode_parts) {
                for sink in &sinks {
                    self.send(
                        sink.shard,
                        ShardMsg::ReplicaOut {
                            sink: *sink,
                            event: event.clone(),
                            meta: None,
                        },
                    );
                }
            }
        }
    }

    /// Shard 0: carries out what the HA role decided.
    pub(super) fn run_ha_commands(&mut self, commands: Vec<HaCommand>) {
        for c in commands {
            match c {
                HaCommand::Connect { index, address } => {
                    self.replica_connects.push((index, address))
                }
                HaCommand::Disconnect => {
                    if let Some(out) = self.replica.outbound.take() {
                        self.conn_close(
                            out.conn,
                            ErrorCondition::new(
                                condition::CONNECTION_FORCED,
                                "replication link closed",
                            ),
                        );
                    }
                }
                HaCommand::Guard { member } => {
                    for shard in 0..self.shards() {
                        self.send(shard, ShardMsg::GuardMember { member });
                    }
                }
                HaCommand::Drop { member, disconnect } => {
                    if disconnect {
                        if let Some(sink) = self
                            .replica
                            .members
                            .iter()
                            .find(|s| s.member == member)
                            .copied()
                        {
                            self.send(sink.shard, ShardMsg::CloseReplicaLink { sink });
                        }
                    }
                    for shard in 0..self.shards() {
                        self.send(shard, ShardMsg::DropMember { member });
                    }
                }
                HaCommand::Members { epoch, members } => {
                    for sink in self.replica.members.clone() {
                        let event = Event::Members {
                            epoch,
                            members: members.clone(),
                        };
                        self.send(
                            sink.shard,
                            ShardMsg::ReplicaOut {
                                sink,
                                event: event.encode_parts(),
                                meta: None,
                            },
                        );
                    }
                }
            }
        }
    }

    /// Connections the runtime should open for the HA role (taken once).
    pub fn take_replica_connects(&mut self) -> Vec<(usize, String)> {
        std::mem::take(&mut self.replica_connects)
    }

    // -----------------------------------------------------------------------
    // Link host (primary): the backup's `$ha.replication` link

    pub(super) fn on_replica_out(&mut self, sink: ReplicaSink, event: Encoded, meta: EnqueueMeta) {
        let Some(c) = self.conns.get_mut(&sink.conn) else {
            return;
        };
        let Some(rl) = c.replica_links.get_mut(&sink.link) else {
            return;
        };
        rl.member.get_or_insert(sink.member);
        rl.backlog.push_back((event, meta));
        if !self.replica.to_drain.contains(&(sink.conn, sink.link)) {
            self.replica.to_drain.push((sink.conn, sink.link));
        }
    }

    /// Writes the events this step queued for each backup's link.
    pub(super) fn flush_replica_links(&mut self) {
        let links = std::mem::take(&mut self.replica.to_drain);
        for &(conn, link) in &links {
            self.drain_replica_link(conn, link);
        }
        self.replica.to_drain = links;
        self.replica.to_drain.clear();
    }

    /// Writes queued events within the backup's credit.
    pub(super) fn drain_replica_link(&mut self, conn: u64, link: LinkKey) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(rl) = c.replica_links.get_mut(&link) else {
            return;
        };
        let mut sent = false;
        while c.engine.credit(link) > 0 && !rl.backlog.is_empty() {
            // As many waiting events as fit one batch go in one delivery.
            let mut count = 0;
            let mut bytes = 0;
            for (event, _) in &rl.backlog {
                if count == BATCH_EVENTS || (count > 0 && bytes + event.len() > BATCH_BYTES) {
                    break;
                }
                count += 1;
                bytes += event.len();
            }
            let parts: Vec<&[u8]> = rl
                .backlog
                .iter()
                .take(count)
                .flat_map(|(event, _)| [&event.head[..], &event.tail[..]])
                .collect();
            let Some(id) = c.engine.send_parts(link, b"r", &parts, false) else {
                break;
            };
            let acks = rl
                .backlog
                .drain(..count)
                .filter_map(|(_, meta)| meta)
                .collect();
            rl.unsettled.insert(id, acks);
            sent = true;
        }
        if sent {
            self.mark_dirty(conn);
        }
    }

    /// The backup settled replication deliveries: acknowledge positions to owners.
    pub(super) fn on_replica_settled(&mut self, conn: u64, first: u32, last: u32) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        // Acknowledgements are cumulative per queue: one per queue and backup,
        // for the highest position the range settled.
        let mut acks: HashMap<(Arc<str>, MemberId), u64> = HashMap::new();
        for rl in c.replica_links.values_mut() {
            let Some(member) = rl.member else { continue };
            let span = u64::from(last.wrapping_sub(first)) + 1;
            let ids: Vec<u32> = if span as usize > rl.unsettled.len() {
                rl.unsettled
                    .keys()
                    .copied()
                    .filter(|id| id.wrapping_sub(first) <= last.wrapping_sub(first))
                    .collect()
            } else {
                (0..span as u32).map(|i| first.wrapping_add(i)).collect()
            };
            for id in ids {
                for (queue, position) in rl.unsettled.remove(&id).unwrap_or_default() {
                    let highest = acks.entry((queue, member)).or_default();
                    *highest = (*highest).max(position);
                }
            }
        }
        for ((queue, member), position) in acks {
            let owner = self.owner_of(&queue);
            self.send(
                owner,
                ShardMsg::ReplicaAck {
                    queue,
                    member,
                    position,
                },
            );
        }
    }

    /// Shard 0 refused a backup: refuse its attach with the reason (and our
    /// status, which a joining broker takes into account before promotion).
    pub(super) fn on_replica_refused(
        &mut self,
        sink: ReplicaSink,
        reason: String,
        status: Option<String>,
    ) {
        if let Some(c) = self.conns.get_mut(&sink.conn) {
            if let Some(attach) = c
                .replica_links
                .remove(&sink.link)
                .and_then(|rl| rl.pending_attach)
            {
                let mut error = ErrorCondition::new(condition::NOT_ALLOWED, reason);
                error.info = status.map(|s| {
                    Value::Map(vec![(Value::symbol("tandem.ha-status"), Value::String(s))])
                });
                c.engine.refuse_attach(sink.link, &attach, error);
                self.mark_dirty(sink.conn);
            }
        }
    }

    /// Backup: our link was refused; note the peer's status if it said.
    pub(super) fn outbound_refused(&mut self, error: &ErrorCondition) {
        let status = error
            .info
            .as_ref()
            .and_then(|i| i.map_get("tandem.ha-status"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(out) = self.replica.outbound.as_mut() {
            out.refused_status = status;
        }
    }

    /// Shard 0 accepted a backup: answer its attach, with our epoch.
    pub(super) fn on_replica_accepted(&mut self, sink: ReplicaSink, epoch: u64) {
        let Some(c) = self.conns.get_mut(&sink.conn) else {
            return;
        };
        let Some(rl) = c.replica_links.get_mut(&sink.link) else {
            return;
        };
        rl.member = Some(sink.member);
        if let Some(attach) = rl.pending_attach.take() {
            let props = Value::Map(vec![(
                Value::symbol("tandem.ha-epoch"),
                Value::Ulong(epoch),
            )]);
            c.engine.accept_attach(
                sink.link,
                &attach,
                attach.source.clone(),
                attach.target.clone(),
                Some(props),
            );
            self.mark_dirty(sink.conn);
        }
    }

    /// Tells shard 0 that a backup's link shows signs of life (at most every 100 ms).
    pub(super) fn replica_heard(&mut self, conn: u64, now: Instant) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let mut heard = Vec::new();
        for rl in c.replica_links.values_mut() {
            let due = rl
                .last_heard
                .is_none_or(|t| now.duration_since(t).as_millis() >= 100);
            if let (Some(member), true) = (rl.member, due) {
                rl.last_heard = Some(now);
                heard.push(member);
            }
        }
        for member in heard {
            self.send(0, ShardMsg::BackupHeard { member });
        }
    }

    // -----------------------------------------------------------------------
    // Backup shard 0: applying the stream

    /// Delivery `id` arrived on our replication link: applies its events in
    /// order; it is settled once every `enq` among them is stored. A delivery
    /// that cannot be applied whole is never settled: the link is dropped and
    /// this backup starts over ([`Self::replica_diverged`]).
    pub(super) fn apply_replica_delivery(&mut self, channel: u16, id: u32, payload: &Bytes) {
        if self.replica.outbound.as_ref().is_none_or(|o| !o.up) {
            return; // a delivery after the link failed: nothing more is applied
        }
        let events = match Event::decode_all(payload) {
            Ok(events) => events,
            Err(e) => {
                self.replica_diverged(format!("undecodable replication delivery {id}: {e}"));
                return;
            }
        };
        // The delivery itself counts as one unapplied part until all its events
        // were handed on, so an owner that stores at once cannot settle it early.
        *self.replica.unapplied.entry((channel, id)).or_default() += 1;
        for event in events {
            if let Err(why) = self.apply_replica_event(channel, id, event) {
                self.replica_diverged(why);
                return;
            }
        }
        self.delivery_part_applied((channel, id));
        self.top_up_replica_credit();
    }

    /// Backup: an event of the stream could not be applied, so this copy of
    /// the primary can no longer be trusted. Logs why, settles nothing more,
    /// drops the link and tells the HA role, which stops being `ready` and
    /// looks for the primary again (the next link starts from a full reset).
    pub(super) fn replica_diverged(&mut self, why: String) {
        tracing::error!("HA: {why}; dropping the replication link to re-synchronise");
        let Some(conn) = self.replica.outbound.as_ref().map(|o| o.conn) else {
            return;
        };
        self.replica.to_settle.clear();
        self.outbound_lost(conn);
        self.ha_link_event(LinkEvent::Diverged);
    }

    /// The queue an `enq` or `deq` event names, with its owner; `Ok(None)` for
    /// a queue the stream deleted, an error for one the backup never heard of.
    fn replica_target(&self, queue: &str, what: &str) -> Result<Option<(Arc<str>, usize)>, String> {
        match self.catalogue.queues.get_key_value(queue) {
            Some((name, entry)) => Ok(Some((name.clone(), entry.owner))),
            None if self.replica.deleted.contains(queue) => Ok(None),
            None => Err(format!("{what} for unknown queue '{queue}'")),
        }
    }

    fn apply_replica_event(&mut self, channel: u16, id: u32, event: Event) -> Result<(), String> {
        match event {
            Event::Queue { name, settings } | Event::QueueReset { name, settings } => {
                self.replica.deleted.remove(&name);
                let reset = self.catalogue.queues.contains_key(name.as_str());
                self.apply_config_now(ConfigOp::ReplaceQueue {
                    name: name.clone(),
                    settings,
                });
                if reset {
                    if let Some(entry) = self.catalogue.queues.get(name.as_str()) {
                        let owner = entry.owner;
                        self.send(
                            owner,
                            ShardMsg::ReplicaPurge {
                                queue: name.clone().into(),
                            },
                        );
                    }
                }
                for bind in self.replica.stashed_binds.remove(&name).unwrap_or_default() {
                    self.apply_binding(bind);
                }
            }
            Event::QueueDelete { name } => {
                self.replica.deleted.insert(name.clone());
                self.apply_config_now(ConfigOp::DeleteQueue {
                    name,
                    if_unused: false,
                });
            }
            Event::Exchange {
                name,
                kind,
                durable,
                replicate,
            } => {
                self.apply_config_now(ConfigOp::DeclareExchange {
                    name,
                    kind,
                    durable,
                    replicate,
                });
            }
            Event::ExchangeDelete { name } => {
                self.apply_config_now(ConfigOp::DeleteExchange { name });
            }
            bind @ (Event::Bind { .. } | Event::Unbind { .. }) => {
                self.apply_binding(bind);
            }
            Event::Enqueue {
                queue,
                position,
                message,
            } => {
                let what = format!("enq of position {position}");
                if let Some((name, owner)) = self.replica_target(&queue, &what)? {
                    let token = self.replica.next_apply;
                    self.replica.next_apply += 1;
                    let applying = Applying {
                        delivery: (channel, id),
                        queue: name.clone(),
                        position,
                    };
                    self.replica.applying.insert(token, applying);
                    *self.replica.unapplied.entry((channel, id)).or_default() += 1;
                    self.send(
                        owner,
                        ShardMsg::ReplicaEnqueue {
                            queue: name,
                            position,
                            message,
                            origin: self.id,
                            token,
                        },
                    );
                }
            }
            Event::Dequeue { queue, positions } => {
                let what = format!("deq of {} positions", positions.len());
                if let Some((name, owner)) = self.replica_target(&queue, &what)? {
                    self.send(
                        owner,
                        ShardMsg::ReplicaDequeue {
                            queue: name,
                            positions,
                        },
                    );
                }
            }
            Event::Members { epoch, members } => {
                self.ha_link_event(LinkEvent::Members { epoch, members });
            }
            Event::Inventory { queues, exchanges } => {
                let stale_queues: Vec<String> = self
                    .catalogue
                    .queues
                    .iter()
                    .filter(|(n, e)| {
                        !e.settings.auto_delete && !queues.iter().any(|q| q.as_str() == &***n)
                    })
                    .map(|(n, _)| n.to_string())
                    .collect();
                let stale_exchanges: Vec<String> = self
                    .catalogue
                    .exchanges
                    .keys()
                    .filter(|n| !BUILT_IN.iter().any(|(b, _)| *b == &***n))
                    .filter(|n| !exchanges.iter().any(|x| x.as_str() == &***n))
                    .map(|n| n.to_string())
                    .collect();
                for name in stale_queues {
                    tracing::info!(
                        "HA: deleting queue '{name}', deleted on the primary while we were away"
                    );
                    self.replica.deleted.insert(name.clone());
                    self.apply_config_now(ConfigOp::DeleteQueue {
                        name,
                        if_unused: false,
                    });
                }
                for name in stale_exchanges {
                    tracing::info!(
                        "HA: deleting exchange '{name}', deleted on the primary while we were away"
                    );
                    self.apply_config_now(ConfigOp::DeleteExchange { name });
                }
            }
        }
        Ok(())
    }

    fn apply_binding(&mut self, event: Event) {
        let (exchange, queue, key, bind) = match event {
            Event::Bind {
                exchange,
                queue,
                key,
            } => (exchange, queue, key, true),
            Event::Unbind {
                exchange,
                queue,
                key,
            } => (exchange, queue, key, false),
            _ => return,
        };
        if bind && !self.catalogue.queues.contains_key(queue.as_str()) {
            self.replica
                .stashed_binds
                .entry(queue.clone())
                .or_default()
                .push(Event::Bind {
                    exchange,
                    queue,
                    key,
                });
            return;
        }
        let op = ConfigOp::binding(bind, exchange, queue, key);
        self.apply_config_now(op);
    }

    /// Applies a configuration change through this shard's ordering point at
    /// once (shard 0), so later events of the stream find it applied.
    fn apply_config_now(&mut self, op: ConfigOp) {
        let req = self.next_req;
        self.next_req += 1;
        self.on_config_request(self.id, req, op);
    }

    fn settle_replica(&mut self, channel: u16, id: u32) {
        self.replica.to_settle.push((channel, id));
    }

    /// Settles this step's applied deliveries, consecutive ids in one frame.
    pub(super) fn flush_replica_settles(&mut self) {
        if self.replica.to_settle.is_empty() {
            return;
        }
        let Some(conn) = self.replica.outbound.as_ref().map(|o| o.conn) else {
            self.replica.to_settle.clear();
            return;
        };
        let mut ids = std::mem::take(&mut self.replica.to_settle);
        if let Some(c) = self.conns.get_mut(&conn) {
            super::publish::accept_in_ranges(&mut c.engine, &mut ids);
            self.mark_dirty(conn);
        }
        ids.clear();
        self.replica.to_settle = ids;
    }

    fn top_up_replica_credit(&mut self) {
        let Some(out) = &self.replica.outbound else {
            return;
        };
        let (conn, Some(link)) = (out.conn, out.link) else {
            return;
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            if c.engine.credit(link) < LINK_CREDIT / 2 {
                c.engine.grant_credit(link, LINK_CREDIT, false);
                self.mark_dirty(conn);
            }
        }
    }

    /// Backup shard 0: an owner stored a replicated message, or could not.
    pub(super) fn on_replica_applied(&mut self, token: u64, stored: bool) {
        let Some(a) = self.replica.applying.remove(&token) else {
            return;
        };
        if stored {
            self.delivery_part_applied(a.delivery);
        } else {
            self.replica_diverged(format!(
                "enq of position {} on queue '{}' not stored: the queue is missing on its owner shard",
                a.position, a.queue
            ));
        }
    }

    /// One part of a replication delivery is applied; the last settles it.
    fn delivery_part_applied(&mut self, delivery: (u16, u32)) {
        if let Some(left) = self.replica.unapplied.get_mut(&delivery) {
            *left -= 1;
            if *left == 0 {
                self.replica.unapplied.remove(&delivery);
                self.settle_replica(delivery.0, delivery.1);
            }
        }
    }

    /// Backup: the replication link's attach was answered.
    pub(super) fn outbound_attached(&mut self, accepted: bool, epoch: u64) {
        let Some(out) = &self.replica.outbound else {
            return;
        };
        let (conn, index, link) = (out.conn, out.index, out.link);
        if !accepted {
            return; // the detach that follows says why; the link is then lost
        }
        if let Some(out) = self.replica.outbound.as_mut() {
            out.up = true;
        }
        if let (Some(c), Some(link)) = (self.conns.get_mut(&conn), link) {
            c.engine.grant_credit(link, LINK_CREDIT, false);
            self.mark_dirty(conn);
        }
        self.ha_link_event(LinkEvent::Up { index, epoch });
    }

    /// Backup: the replication connection opened; begin and attach.
    pub(super) fn outbound_opened(&mut self) {
        let Some(ha) = self.ha.as_ref() else { return };
        let who = ha.identity();
        let Some(out) = self.replica.outbound.as_mut() else {
            return;
        };
        let Some(c) = self.conns.get_mut(&out.conn) else {
            return;
        };
        let channel = c.engine.begin();
        out.channel = Some(channel);
        let source = crate::amqp::performative::Source {
            address: Some(crate::replica::NODE.into()),
            ..Default::default()
        };
        let properties = Value::Map(vec![
            (
                Value::symbol("tandem.ha-broker-id"),
                Value::String(who.broker_id.clone()),
            ),
            (
                Value::symbol("tandem.ha-address"),
                Value::String(who.address),
            ),
            (Value::symbol("tandem.ha-epoch"), Value::Ulong(who.epoch)),
        ]);
        let attach = crate::amqp::performative::Attach::receiver(
            format!("ha-replication-{}", who.broker_id),
            source,
        )
        .with_properties(properties);
        out.link = c.engine.attach(channel, attach);
        let conn = out.conn;
        self.mark_dirty(conn);
    }

    /// Backup: the replication link or its connection ended: one event for the
    /// HA role, whatever mix of detach, close and EOF reported it.
    pub(super) fn outbound_lost(&mut self, conn: u64) {
        if self
            .replica
            .outbound
            .as_ref()
            .is_none_or(|o| o.conn != conn)
        {
            return;
        }
        let Some(out) = self.replica.outbound.take() else {
            return;
        };
        self.replica.applying.clear();
        self.replica.unapplied.clear();
        self.replica.stashed_binds.clear();
        self.replica.lost_up = out.up.then_some(conn);
        let event = match (out.up, out.refused_status) {
            (true, _) => {
                tracing::warn!("HA: lost the replication link to the primary");
                LinkEvent::Lost
            }
            (false, Some(status)) => LinkEvent::PeerStatus {
                index: out.index,
                status,
            },
            (false, None) => LinkEvent::Failed { index: out.index },
        };
        self.conn_close(
            conn,
            ErrorCondition::new(condition::CONNECTION_FORCED, "replication link closed"),
        );
        self.ha_link_event(event);
    }

    /// Backup: registers the outbound replication connection to `brokers[index]`.
    pub fn add_replica_connection(
        &mut self,
        engine: crate::amqp::connection::Connection,
        index: usize,
        peer: String,
    ) -> u64 {
        let id = self.add_connection(engine, peer);
        if let Some(c) = self.conns.get_mut(&id) {
            c.admin = true;
            c.outbound = true;
        }
        if let Some(old) = self.replica.outbound.take() {
            self.conn_close(
                old.conn,
                ErrorCondition::new(condition::CONNECTION_FORCED, "replaced"),
            );
        }
        self.replica.outbound = Some(Outbound {
            conn: id,
            index,
            channel: None,
            link: None,
            refused_status: None,
            up: false,
        });
        id
    }

    /// Backup: connecting to `brokers[index]` failed outright.
    pub fn replica_connect_failed(&mut self, index: usize) {
        self.ha_link_event(LinkEvent::Failed { index });
    }

    /// The identity our replication link carries (for the runtime's open frame).
    pub fn ha_identity(&self) -> Option<BackupIdentity> {
        self.ha.as_ref().map(|h| h.identity())
    }
}

/// How a primary closes the link of a backup it no longer waits for: the
/// backup must know that it missed what was settled since, and must not stay
/// `ready` (see [`dropped_by_primary_said`]).
pub(super) fn dropped_by_primary() -> ErrorCondition {
    let mut error = ErrorCondition::new(
        condition::CONNECTION_FORCED,
        "backup dropped by the primary",
    );
    error.info = Some(Value::Map(vec![(
        Value::symbol("tandem.ha-dropped"),
        Value::Bool(true),
    )]));
    error
}

/// Whether a close of our replication link says the primary dropped us.
pub(super) fn dropped_by_primary_said(error: &ErrorCondition) -> bool {
    matches!(
        error
            .info
            .as_ref()
            .and_then(|i| i.map_get("tandem.ha-dropped")),
        Some(Value::Bool(true))
    )
}

/// Reads a backup's identity from its attach properties.
pub(super) fn identity_from(props: Option<&Value>) -> Option<BackupIdentity> {
    let p = props?;
    Some(BackupIdentity {
        broker_id: p.map_get("tandem.ha-broker-id")?.as_str()?.to_owned(),
        address: p.map_get("tandem.ha-address")?.as_str()?.to_owned(),
        epoch: p
            .map_get("tandem.ha-epoch")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    })
}
