//! The shard of a primary that accepted a backup's `$ha.replication` link:
//! asks shard 0 whether the HA role accepts the backup, answers the attach,
//! writes the events owners and shard 0 send it within the backup's credit
//! (the events of one step share deliveries, up to [`BATCH_EVENTS`] or
//! [`BATCH_BYTES`]), and turns the backup's settlements into acknowledgements
//! for the queue owners.

use hashbrown::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tandem_shards::amqp::codec::Value;
use tandem_shards::amqp::connection::LinkKey;
use tandem_shards::amqp::performative::{condition, Attach, ErrorCondition, Role};
use tandem_shards::broker::Shard;

use super::codec::{ranges_from_value, Event};
use super::{
    msg, push_for, Acks, Backlog, Delivered, EnqueueMeta, Holdings, Msg, Refusal, ReplicaSink,
    Replication, Unsettled,
};
use crate::guard::MemberId;
use crate::role::BackupIdentity;
use tandem_shards::stats::Series;

/// Most events, and bytes of events (unless one event is larger), in one
/// replication delivery.
const BATCH_EVENTS: usize = 256;
const BATCH_BYTES: usize = 64 * 1024;

/// Most bytes of replication deliveries a backup may have unsettled: beyond
/// it events wait here, where what a consumer takes meanwhile is cancelled
/// (and memory is bounded by this, not by the backup's credit).
const WINDOW_BYTES: usize = 8 * 1024 * 1024;

/// One backup's link hosted here.
struct HostedLink {
    member: Option<MemberId>,
    /// The backup's broker id and address, as its attach said (metrics
    /// label its lag with them).
    backup: Option<(String, String)>,
    /// A queue replica's link: the queue it copies (never a member).
    replica: Option<Arc<str>>,
    /// The backup's attach, answered when the HA role accepts it.
    pending_attach: Option<Box<Attach>>,
    /// Events waiting for credit.
    backlog: Backlog,
    /// Unsettled deliveries: delivery id -> the queue positions their `enq`
    /// events acknowledge.
    unsettled: Unsettled,
    last_heard: Option<Instant>,
    /// Bytes of the unsettled deliveries.
    unsettled_bytes: usize,
    /// The `enq` events that stayed in the backlog after a drain (the first
    /// `indexed` entries of it are indexed), and those of them whose message
    /// was consumed on the primary meanwhile (a `deq` behind them in the
    /// backlog): those are not sent, only acknowledged with the next
    /// delivery. A backup that keeps up costs nothing here: its events never
    /// stay.
    pending: HashSet<(Arc<str>, u64)>,
    cancelled: HashSet<(Arc<str>, u64)>,
    indexed: usize,
}

#[derive(Default)]
pub(super) struct HostState {
    links: HashMap<(u64, LinkKey), HostedLink>,
    /// Links with new events, written at the end of the step.
    to_drain: Vec<(u64, LinkKey)>,
    /// Acknowledgements gathered this step: the highest position each backup
    /// settled per queue, sent to the owners in one message each at its end.
    acks: HashMap<(Arc<str>, MemberId), u64>,
    /// Messages (and their bytes) consumed before they were sent to a backup,
    /// and so never sent.
    pub(super) skipped: (u64, u64),
    /// Queue replica links served here so far (their ids count up).
    replicas: u64,
}

impl HostedLink {
    fn new(member: Option<MemberId>, replica: Option<Arc<str>>) -> HostedLink {
        HostedLink {
            member,
            backup: None,
            replica,
            pending_attach: None,
            backlog: Backlog::new(),
            unsettled: Unsettled::new(),
            last_heard: None,
            unsettled_bytes: 0,
            pending: HashSet::new(),
            cancelled: HashSet::new(),
            indexed: 0,
        }
    }
}

impl Replication {
    /// A backup attaches its replication link: only brokers' and admin
    /// connections may; shard 0 decides whether the HA role accepts it.
    pub(super) fn host_link(
        &mut self,
        shard: &mut Shard,
        conn: u64,
        link: LinkKey,
        attach: Attach,
    ) {
        let refuse = |shard: &mut Shard, error: ErrorCondition| {
            shard.release_link(conn, link);
            if let Some(e) = shard.engine(conn) {
                e.refuse_attach(link, &attach, error);
            }
            shard.wrote_to(conn);
        };
        if attach.role != Role::Receiver {
            let error = ErrorCondition::new(
                condition::NOT_ALLOWED,
                "the replication node only sends: attach a receiver",
            );
            return refuse(shard, error);
        }
        if let Some(queue) = replica_queue(attach.properties.as_ref()) {
            let queue = queue.to_owned();
            return match self.replica_refusal(shard, &queue) {
                Some(error) => refuse(shard, error),
                None => self.host_replica(shard, conn, link, &attach, queue),
            };
        }
        if !shard.is_admin_connection(conn) {
            let error = ErrorCondition::new(
                condition::UNAUTHORIZED_ACCESS,
                "only another broker of the cluster may replicate (qpid.ha-backup)",
            );
            return refuse(shard, error);
        }
        let Some(who) = identity_from(attach.properties.as_ref()) else {
            let error = ErrorCondition::new(
                condition::INVALID_FIELD,
                "replication link without broker identity",
            );
            return refuse(shard, error);
        };
        let holdings = holdings_from(attach.properties.as_ref());
        let mut hosted = HostedLink::new(None, None);
        hosted.backup = Some((who.broker_id.clone(), who.address.clone()));
        hosted.pending_attach = Some(Box::new(attach));
        self.host.links.insert((conn, link), hosted);
        let sink = ReplicaSink {
            member: 0,
            shard: shard.id,
            conn,
            link,
        };
        shard.send_ext(
            0,
            msg(Msg::BackupAttached {
                sink,
                who,
                holdings,
            }),
        );
    }

    /// Why a queue replica's attach for `queue` is refused, if it is.
    fn replica_refusal(&self, shard: &Shard, queue: &str) -> Option<ErrorCondition> {
        if !self.settings.queue_replication {
            return Some(ErrorCondition::new(
                condition::NOT_ALLOWED,
                "this broker does not serve queue replicas: start it with ha-queue-replication = yes (or ha-cluster = yes)",
            ));
        }
        match shard.catalogue.queues.get(queue) {
            None => Some(ErrorCondition::new(
                condition::NOT_FOUND,
                format!(
                    "no queue '{}' on this broker to replicate",
                    tandem_shards::shown::shown(queue)
                ),
            )),
            Some(entry) if entry.settings.auto_delete => Some(ErrorCondition::new(
                condition::NOT_ALLOWED,
                format!("queue '{queue}' is temporary (auto-delete): it cannot be replicated"),
            )),
            Some(_) => None,
        }
    }

    /// Another broker copies `queue` (`tandem-ha replicate`): an ordinary
    /// client's link, served by the queue's owner like a backup's stream of
    /// that queue, but nothing waits for it.
    fn host_replica(
        &mut self,
        shard: &mut Shard,
        conn: u64,
        link: LinkKey,
        attach: &Attach,
        queue: String,
    ) {
        self.host.replicas += 1;
        let member = crate::guard::QUEUE_REPLICA | ((shard.id as u64) << 40) | self.host.replicas;
        let held = holdings_from(attach.properties.as_ref())
            .get(&queue)
            .cloned();
        let queue: Arc<str> = queue.into();
        self.host.links.insert(
            (conn, link),
            HostedLink::new(Some(member), Some(queue.clone())),
        );
        let peer = shard.conn_peer(conn).unwrap_or_default();
        let Some(engine) = shard.engine(conn) else {
            return;
        };
        engine.accept_attach(
            link,
            attach,
            attach.source.clone(),
            attach.target.clone(),
            None,
        );
        shard.wrote_to(conn);
        tracing::info!("HA: serving a replica of queue '{queue}' to {peer}");
        let sink = ReplicaSink {
            member,
            shard: shard.id,
            conn,
            link,
        };
        let owner = shard.owner_of(&queue);
        shard.send_ext(owner, msg(Msg::StartReplica { queue, sink, held }));
    }

    /// Events for a backup's stream.
    pub(super) fn out(&mut self, sink: ReplicaSink, mut events: Backlog) {
        let key = (sink.conn, sink.link);
        let Some(hl) = self.host.links.get_mut(&key) else {
            return;
        };
        hl.member.get_or_insert(sink.member);
        if !hl.pending.is_empty() {
            // A dequeue of messages still waiting here: they need not go.
            for (event, _) in events
                .iter()
                .filter(|(e, m)| m.is_none() && e.tail.is_empty())
            {
                if let Ok(Event::Dequeue { queue, positions }) = Event::decode(&event.head) {
                    let queue: Arc<str> = queue.into();
                    for p in positions {
                        let at = (queue.clone(), p);
                        if hl.pending.remove(&at) {
                            hl.cancelled.insert(at);
                        }
                    }
                }
            }
        }
        if hl.backlog.is_empty() {
            hl.backlog = events;
        } else {
            hl.backlog.append(&mut events);
        }
        if !self.host.to_drain.contains(&key) {
            self.host.to_drain.push(key);
        }
    }

    /// Writes the events this step queued for each backup's link.
    pub(super) fn flush_links(&mut self, shard: &mut Shard) {
        let links = std::mem::take(&mut self.host.to_drain);
        for &(conn, link) in &links {
            self.drain_link(shard, conn, link);
        }
        self.host.to_drain = links;
        self.host.to_drain.clear();
    }

    /// Writes queued events within the backup's credit.
    pub(super) fn drain_link(&mut self, shard: &mut Shard, conn: u64, link: LinkKey) {
        let Some(hl) = self.host.links.get_mut(&(conn, link)) else {
            return;
        };
        let now = shard.now();
        let Some(engine) = shard.engine(conn) else {
            return;
        };
        let mut sent = false;
        let skipped = &mut self.host.skipped;
        while engine.credit(link) > 0 && hl.unsettled_bytes < WINDOW_BYTES && !hl.backlog.is_empty()
        {
            // As many waiting events as fit one batch go in one delivery; a
            // cancelled `enq` goes only as an acknowledgement of that delivery.
            let cancelled = |meta: &EnqueueMeta| {
                !hl.cancelled.is_empty() && meta.as_ref().is_some_and(|m| hl.cancelled.contains(m))
            };
            let (mut taken, mut count, mut bytes) = (0, 0, 0);
            for (event, meta) in &hl.backlog {
                if cancelled(meta) {
                    taken += 1;
                    continue;
                }
                if count == BATCH_EVENTS || (count > 0 && bytes + event.len() > BATCH_BYTES) {
                    break;
                }
                count += 1;
                bytes += event.len();
                taken += 1;
            }
            if count == 0 {
                // Only cancelled ones: the dequeue that cancelled them follows.
                break;
            }
            let parts: Vec<&[u8]> = hl
                .backlog
                .iter()
                .take(taken)
                .filter(|(_, meta)| !cancelled(meta))
                .flat_map(|(event, _)| [&event.head[..], &event.tail[..]])
                .collect();
            let size: usize = parts.iter().map(|p| p.len()).sum();
            let Some(id) = engine.send_parts(link, b"r", &parts, false) else {
                break;
            };
            let mut acks = Vec::new();
            let indexed = hl.indexed.min(taken);
            for (i, (event, meta)) in hl.backlog.drain(..taken).enumerate() {
                let Some(at) = meta else { continue };
                let mut bytes = event.len();
                if i < indexed {
                    hl.pending.remove(&at);
                    if hl.cancelled.remove(&at) {
                        skipped.0 += 1;
                        skipped.1 += event.tail.len() as u64;
                        bytes = 0;
                    }
                }
                acks.push((at.0, at.1, bytes));
            }
            hl.indexed -= indexed;
            let delivered = Delivered {
                acks,
                size,
                sent: now,
            };
            hl.unsettled.insert(id, delivered);
            hl.unsettled_bytes += size;
            sent = true;
        }
        // What stays waits for credit or window: index its `enq`s, so that a
        // dequeue arriving meanwhile can cancel them.
        for (_, meta) in hl.backlog.iter().skip(hl.indexed) {
            if let Some(at) = meta {
                hl.pending.insert(at.clone());
            }
        }
        hl.indexed = hl.backlog.len();
        if sent {
            shard.wrote_to(conn);
        }
    }

    /// Each backup's lag, for metrics: what was sent or waits to be sent and
    /// is not acknowledged yet, in messages (`enq` events), bytes and age
    /// (of the oldest unsettled delivery), for the backup and for each of
    /// its queues; and how long ago it was last heard.
    pub(super) fn backup_series(&self, now: Instant) -> Vec<Series> {
        let mut out = Vec::new();
        for hl in self.host.links.values() {
            let Some((broker_id, address)) = &hl.backup else {
                continue;
            };
            let oldest = hl.unsettled.values().map(|d| d.sent).min();
            let age = |at: Option<Instant>| {
                at.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64())
            };
            let mut queues: Vec<QueueLag> = Vec::new();
            for d in hl.unsettled.values() {
                for (queue, _, bytes) in &d.acks {
                    QueueLag::of(&mut queues, queue).add(*bytes, Some(d.sent));
                }
            }
            let mut waiting_bytes = 0;
            for (event, meta) in &hl.backlog {
                waiting_bytes += event.len();
                if let Some((queue, _)) = meta {
                    QueueLag::of(&mut queues, queue).add(event.len(), None);
                }
            }
            let messages: u64 = queues.iter().map(|q| q.messages).sum();
            let backup = || {
                vec![
                    ("broker_id", broker_id.clone()),
                    ("address", address.clone()),
                ]
            };
            for (name, help, value) in [
                (
                    "tandem_ha_backup_lag_messages",
                    "Messages sent or waiting to be sent to the backup and not acknowledged by it",
                    messages as f64,
                ),
                (
                    "tandem_ha_backup_lag_bytes",
                    "Bytes of replication events sent or waiting and not acknowledged",
                    (hl.unsettled_bytes + waiting_bytes) as f64,
                ),
                (
                    "tandem_ha_backup_lag_seconds",
                    "Age of the backup's oldest unacknowledged replication delivery (0: none)",
                    age(oldest),
                ),
                (
                    "tandem_ha_backup_last_heard_seconds",
                    "Time since the backup's link last showed signs of life",
                    age(hl.last_heard),
                ),
            ] {
                out.push(Series {
                    name,
                    help,
                    labels: backup(),
                    value,
                });
            }
            for q in queues {
                let labels = || {
                    vec![
                        ("queue", q.queue.to_string()),
                        ("broker_id", broker_id.clone()),
                    ]
                };
                for (name, help, value) in [
                    (
                        "tandem_ha_queue_lag_messages",
                        "The queue's messages not yet acknowledged by the backup",
                        q.messages as f64,
                    ),
                    (
                        "tandem_ha_queue_lag_bytes",
                        "Bytes of the queue's messages not yet acknowledged by the backup",
                        q.bytes as f64,
                    ),
                    (
                        "tandem_ha_queue_lag_seconds",
                        "Age of the queue's oldest message not acknowledged by the backup (sent or waiting)",
                        age(q.oldest.or(oldest)),
                    ),
                ] {
                    out.push(Series {
                        name,
                        help,
                        labels: labels(),
                        value,
                    });
                }
            }
        }
        out
    }

    /// The backup settled replication deliveries: acknowledge positions to owners.
    pub(super) fn on_settled(&mut self, conn: u64, first: u32, last: u32) {
        // Acknowledgements are cumulative per queue: one per queue and backup
        // and step, for the highest position settled.
        let acks = &mut self.host.acks;
        for (&(c, link), hl) in self.host.links.iter_mut() {
            if c != conn {
                continue;
            }
            // Room in the window again: what waits goes at the end of the step.
            if !hl.backlog.is_empty() && !self.host.to_drain.contains(&(c, link)) {
                self.host.to_drain.push((c, link));
            }
            let Some(member) = hl.member else { continue };
            let span = u64::from(last.wrapping_sub(first)) + 1;
            let ids: Vec<u32> = if span as usize > hl.unsettled.len() {
                hl.unsettled
                    .keys()
                    .copied()
                    .filter(|id| id.wrapping_sub(first) <= last.wrapping_sub(first))
                    .collect()
            } else {
                (0..span as u32).map(|i| first.wrapping_add(i)).collect()
            };
            for id in ids {
                let Some(delivered) = hl.unsettled.remove(&id) else {
                    continue;
                };
                hl.unsettled_bytes -= delivered.size;
                for (queue, position, _) in delivered.acks {
                    let highest = acks.entry((queue, member)).or_default();
                    *highest = (*highest).max(position);
                }
            }
        }
    }

    /// Sends this step's acknowledgements, one message per owner.
    pub(super) fn flush_acks(&mut self, shard: &mut Shard) {
        if self.host.acks.is_empty() {
            return;
        }
        let mut per_owner: Vec<(usize, Acks)> = Vec::new();
        for ((queue, member), position) in self.host.acks.drain() {
            if &*queue == super::sync::SYNC_MARK {
                let upto = position;
                shard.send_ext(0, msg(Msg::SyncAcked { member, upto }));
                continue;
            }
            let owner = shard.owner_of(&queue);
            push_for(&mut per_owner, owner, (queue, member, position));
        }
        for (owner, acks) in per_owner {
            shard.send_ext(owner, msg(Msg::Acks { acks }));
        }
    }

    /// Shard 0 refused a backup: refuse its attach with the reason (and our
    /// status, which a joining broker takes into account before promotion).
    pub(super) fn refused(&mut self, shard: &mut Shard, sink: ReplicaSink, refusal: Refusal) {
        let Some(hl) = self.host.links.remove(&(sink.conn, sink.link)) else {
            return;
        };
        shard.release_link(sink.conn, sink.link);
        let Refusal {
            condition,
            reason,
            us,
        } = refusal;
        if let (Some(attach), Some(engine)) = (hl.pending_attach, shard.engine(sink.conn)) {
            let mut error = ErrorCondition::new(condition, reason);
            error.info = us.map(|us| {
                Value::Map(vec![
                    (
                        Value::symbol("tandem.ha-status"),
                        Value::string(us.status.as_str()),
                    ),
                    (Value::symbol("tandem.ha-epoch"), Value::Ulong(us.epoch)),
                    (
                        Value::symbol("tandem.ha-broker-id"),
                        Value::String(us.broker_id),
                    ),
                ])
            });
            engine.refuse_attach(sink.link, &attach, error);
            shard.wrote_to(sink.conn);
        }
    }

    /// Shard 0 accepted a backup: answer its attach, with our epoch.
    pub(super) fn accepted(
        &mut self,
        shard: &mut Shard,
        sink: ReplicaSink,
        epoch: u64,
        cluster_id: Option<String>,
    ) {
        let Some(hl) = self.host.links.get_mut(&(sink.conn, sink.link)) else {
            return;
        };
        hl.member = Some(sink.member);
        if let (Some(attach), Some(engine)) = (hl.pending_attach.take(), shard.engine(sink.conn)) {
            let mut props = vec![(Value::symbol("tandem.ha-epoch"), Value::Ulong(epoch))];
            if let Some(id) = cluster_id {
                props.push((Value::symbol("tandem.ha-cluster-id"), Value::String(id)));
            }
            let props = Value::Map(props);
            engine.accept_attach(
                sink.link,
                &attach,
                attach.source.clone(),
                attach.target.clone(),
                Some(props),
            );
            shard.wrote_to(sink.conn);
        }
    }

    /// Tells shard 0 that a backup's link shows signs of life (at most every
    /// 100 ms).
    pub(super) fn link_heard(&mut self, shard: &mut Shard, conn: u64, now: Instant) {
        let mut heard = Vec::new();
        for ((c, _), hl) in self.host.links.iter_mut() {
            if *c != conn {
                continue;
            }
            let due = hl
                .last_heard
                .is_none_or(|t| now.duration_since(t).as_millis() >= 100);
            if let (Some(member), true, None) = (hl.member, due, &hl.replica) {
                hl.last_heard = Some(now);
                heard.push(member);
            }
        }
        for member in heard {
            shard.send_ext(0, msg(Msg::BackupHeard { member }));
        }
    }

    /// A backup's link closed (detached, or its connection ended).
    pub(super) fn link_gone(&mut self, shard: &mut Shard, conn: u64, link: LinkKey) {
        let Some(hl) = self.host.links.remove(&(conn, link)) else {
            return;
        };
        match (hl.member, hl.replica) {
            // A queue replica: only its queue's owner streams to it.
            (Some(member), Some(queue)) => {
                let owner = shard.owner_of(&queue);
                shard.send_ext(owner, msg(Msg::DropMember { member }));
            }
            (Some(member), None) => shard.send_ext(0, msg(Msg::BackupGone { member })),
            (None, _) => {}
        }
    }
}

/// The queue a queue replica's attach copies (`tandem.ha-queue`), if it is one.
pub(super) fn replica_queue(props: Option<&Value>) -> Option<&str> {
    props?.map_get("tandem.ha-queue")?.as_str()
}

/// Reads a backup's identity from its attach properties.
fn identity_from(props: Option<&Value>) -> Option<BackupIdentity> {
    let p = props?;
    Some(BackupIdentity {
        broker_id: p.map_get("tandem.ha-broker-id")?.as_str()?.to_owned(),
        address: p.map_get("tandem.ha-address")?.as_str()?.to_owned(),
        epoch: p
            .map_get("tandem.ha-epoch")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        replicate: p
            .map_get("tandem.ha-replicate")
            .and_then(Value::as_str)
            .map(str::to_owned),
        probing: p
            .map_get("tandem.ha-probe")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// What a backup's attach says it holds (`tandem.ha-holdings`: queue name ->
/// position ranges). A queue whose ranges do not make sense is left out: it
/// is sent whole, as to a backup that said nothing.
fn holdings_from(properties: Option<&Value>) -> Holdings {
    let mut out = HashMap::new();
    if let Some(Value::Map(entries)) = properties.and_then(|p| p.map_get("tandem.ha-holdings")) {
        for (name, ranges) in entries {
            let Some(name) = name.as_str() else {
                continue;
            };
            match ranges_from_value(ranges) {
                Some(ranges) => {
                    out.insert(name.to_owned(), ranges);
                }
                None => tracing::warn!(
                    "HA: a backup's holdings of queue '{name}' are not valid position ranges: sending it whole"
                ),
            }
        }
    }
    Arc::new(out)
}

/// One queue's part of a backup's lag.
struct QueueLag<'a> {
    queue: &'a Arc<str>,
    messages: u64,
    bytes: u64,
    /// When its oldest unacknowledged message was sent (`None`: all wait).
    oldest: Option<Instant>,
}

impl<'a> QueueLag<'a> {
    fn of<'l>(all: &'l mut Vec<QueueLag<'a>>, queue: &'a Arc<str>) -> &'l mut QueueLag<'a> {
        let at = match all.iter().position(|q| q.queue == queue) {
            Some(at) => at,
            None => {
                all.push(QueueLag {
                    queue,
                    messages: 0,
                    bytes: 0,
                    oldest: None,
                });
                all.len() - 1
            }
        };
        &mut all[at]
    }

    fn add(&mut self, bytes: usize, sent: Option<Instant>) {
        self.messages += 1;
        self.bytes += bytes as u64;
        self.oldest = match (self.oldest, sent) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}
