//! A backup's side of the stream, on its replication shard (shard 0 when the
//! broker has none): the outbound replication link to the primary, and
//! applying the stream in order. The HA role on shard 0 opens and closes the
//! link ([`super::Msg::Connect`]) and hears what happened on it
//! ([`super::Msg::ToRole`]). Configuration goes to shard 0, the ordering
//! point, and the stream waits until every shard applied it (and, before it,
//! until the owners handled what was sent to them, which travels on other
//! rings). Each `enq` goes to its queue's owner, which stores it at the
//! primary's position; a delivery is settled once all of it is applied. A
//! delivery that cannot be applied whole is never settled: the link is
//! dropped and the HA role told (`Diverged`), so the backup stops being
//! `ready` and starts over from a full reset.
//!
//! Before attaching, the backup asks every shard which positions of each
//! queue it holds and says so in the attach (`tandem.ha-holdings`), so the
//! primary sends only what it lacks (`queue-sync`) instead of every message
//! (`queue-reset`). After a divergence it says nothing, and gets everything.

use std::collections::VecDeque;

use hashbrown::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tandem_shards::amqp::codec::Value;
use tandem_shards::amqp::connection::{
    Connection, ConnectionConfig, Event as EngineEvent, LinkKey, Sasl,
};
use tandem_shards::amqp::performative::{condition, Attach, ErrorCondition, Source};
use tandem_shards::broker::{accept_in_ranges, ConfigDone, ConfigOp, Shard};
use tandem_shards::exchange::BUILT_IN;

use super::codec::{ranges_value, Event};
use super::{
    dropped_by_primary_said, msg, push_for, Msg, Replication, ShardHoldings, ToStore, NODE,
};
use crate::role::{BackupIdentity, LinkEvent};

/// Credit a backup grants its link, topped up at half.
const LINK_CREDIT: u32 = 1000;

/// The backup's outbound replication connection.
struct Outbound {
    conn: u64,
    index: usize,
    link: Option<LinkKey>,
    /// The peer refused our link and said its status.
    /// The status (and epoch) the peer said when it refused our link.
    refused_status: Option<(String, u64)>,
    /// The peer accepted our link (so losing it means losing the primary).
    up: bool,
}

/// A delivery of the stream being applied: the events not applied yet.
struct Incoming {
    delivery: (u16, u32),
    events: VecDeque<Event>,
}

/// What applying the stream waits for.
enum Wait {
    /// Shard 0 applying a configuration change on every shard; then `then`.
    Config { req: u64, then: AfterConfig },
    /// Owners confirming that they handled what was sent to them (`left`
    /// answers to go), before a configuration change may overtake it.
    Fence { left: usize },
}

/// What follows an applied configuration change.
enum AfterConfig {
    Nothing,
    /// A queue (re)declared by the stream: purge what an older copy held, and
    /// apply the bindings that waited for it.
    Declared {
        name: String,
        purge: bool,
    },
    /// A queue declared for an incremental catch-up: drop what the primary
    /// no longer has, and apply the bindings that waited for it.
    Synced {
        name: String,
        next: u64,
        keep: Vec<(u64, u64)>,
    },
}

#[derive(Default)]
pub(super) struct BackupState {
    outbound: Option<Outbound>,
    /// Who we say we are, from the HA role's last `Connect`.
    who: Option<BackupIdentity>,
    /// The role's link generation: events for the role carry it, so the
    /// role ignores those of a link it already replaced or closed.
    generation: u64,
    /// Events for the role raised this step, sent at its end in order.
    to_role: Vec<LinkEvent>,
    /// The primary was heard this step.
    heard: bool,
    /// Deliveries received and not applied whole yet, in order.
    pending: VecDeque<Incoming>,
    waiting: Option<Wait>,
    /// Owners sent an `enq`, `deq` or purge since the last fence.
    touched: Vec<usize>,
    /// The connection of the last link that was up when it was lost (its
    /// close may still say that the primary dropped us).
    lost_up: Option<u64>,
    /// Bindings waiting for their queue to be declared.
    stashed_binds: HashMap<String, Vec<ConfigOp>>,
    /// Batches of `enq` events an owner is storing, by batch id (an ack
    /// token of this shard): the delivery (channel, delivery id) they came
    /// in, and how many are not stored yet.
    applying: HashMap<u64, ((u16, u32), usize)>,
    /// Asking the shards what we hold, before attaching.
    gathering: Option<Gathering>,
    next_gather: u64,
    /// The last stream could not be applied: the next link says we hold
    /// nothing, so it starts from a full reset.
    distrust_holdings: bool,
    /// The last refusal of our link that was logged.
    last_refusal: Option<String>,
    /// Shards whose store cannot write, and why: no replication link (and
    /// so no acknowledgement) until none is left.
    store_failing: HashMap<usize, String>,
    /// Queues the stream deleted. Their owners' last events may still follow
    /// (they travel on another ring of the primary than the delete), and are
    /// skipped, until the queue is declared again.
    deleted: HashSet<String>,
    /// Deliveries with `enq` events not stored yet (how many).
    unapplied: HashMap<(u16, u32), usize>,
    /// Deliveries to settle at the end of this step, as ranges.
    to_settle: Vec<(u16, u32)>,
    /// `enq` events of the delivery being applied, per owner, not sent yet.
    to_store: Vec<(usize, Vec<ToStore>)>,
    /// The delivery they came in.
    storing: (u16, u32),
    /// The last queue an `enq` or `deq` named, and its owner (most events of
    /// a stream name the queue of the one before; cleared by every change).
    last_target: Option<(Arc<str>, usize)>,
}

/// The shards' answers to a holdings request, for the link on `conn`.
struct Gathering {
    conn: u64,
    id: u64,
    left: usize,
    queues: ShardHoldings,
}

/// How much of the attach frame the holdings may take, at most (a queue
/// beyond it is simply not mentioned, and gets a full reset).
const HOLDINGS_BUDGET: usize = 256 * 1024;

impl BackupState {
    pub(super) fn outbound_conn(&self) -> Option<u64> {
        self.outbound.as_ref().map(|o| o.conn)
    }
}

impl Replication {
    /// The engine of our replication connection to `brokers[token]`.
    pub(super) fn outbound_engine(
        &mut self,
        shard: &mut Shard,
        address: &str,
    ) -> Option<Connection> {
        let who = self.backup.who.clone()?;
        let engine = self.broker_link_engine(shard, address, who);
        tracing::info!("HA: replication link connecting to {address}");
        Some(engine)
    }

    /// The engine of a connection to another broker of the cluster (our
    /// replication link, or an epoch probe): the cluster's credentials, our
    /// identity in `qpid.ha-backup`, heartbeats.
    pub(super) fn broker_link_engine(
        &self,
        shard: &Shard,
        address: &str,
        who: BackupIdentity,
    ) -> Connection {
        let s = &self.settings;
        let backup_info = Value::Map(vec![
            (Value::symbol("broker-id"), Value::String(who.broker_id)),
            (Value::symbol("address"), Value::String(who.address)),
            (Value::symbol("epoch"), Value::Ulong(who.epoch)),
        ]);
        let credentials = s
            .username
            .clone()
            .map(|u| (u, s.password.clone().unwrap_or_default()));
        let properties = Value::Map(vec![(Value::symbol("qpid.ha-backup"), backup_info)]);
        let mechanism = s.mechanism.as_deref();
        self.link_engine(shard, address, Some(properties), credentials, mechanism)
    }

    /// The engine of a connection this broker opens to another (a backup's
    /// link, a probe, a queue replica's feed): heartbeats from
    /// `link-heartbeat-interval`, the peer silent for twice that is gone.
    pub(super) fn link_engine(
        &self,
        shard: &Shard,
        address: &str,
        properties: Option<Value>,
        credentials: Option<(String, String)>,
        mechanism: Option<&str>,
    ) -> Connection {
        let s = &self.settings;
        let broker = &shard.settings;
        let cfg = ConnectionConfig {
            container_id: broker.container_id.clone(),
            max_frame_size: broker.max_frame_size,
            channel_max: 16,
            // The peer must be heard at least every heartbeat; twice that is silence.
            idle_timeout: Some(s.heartbeat * 2),
            properties,
            max_message_size: broker.max_message_size,
            hostname: Some(address.to_owned()),
            sasl: Sasl::Client {
                credentials,
                skip: false,
            },
        };
        let mut engine = Connection::client(cfg, shard.now());
        engine.set_heartbeat(s.heartbeat);
        if let Some(mechanism) = mechanism {
            engine.use_mechanism(mechanism);
        }
        engine
    }

    /// Our replication connection to `brokers[token]` runs as `conn`.
    pub(super) fn outbound_opened_as(&mut self, shard: &mut Shard, token: u64, conn: u64) {
        if let Some(old) = self.backup.outbound.take() {
            shard.conn_close(
                old.conn,
                ErrorCondition::new(condition::CONNECTION_FORCED, "replaced"),
            );
        }
        self.backup.outbound = Some(Outbound {
            conn,
            index: token as usize,
            link: None,
            refused_status: None,
            up: false,
        });
    }

    /// Connecting to `brokers[token]` failed outright.
    pub(super) fn outbound_failed(&mut self, token: u64) {
        let index = token as usize;
        self.tell_role(LinkEvent::Failed { index });
    }

    /// Tells the HA role of a link event (at the end of the step).
    fn tell_role(&mut self, event: LinkEvent) {
        self.backup.to_role.push(event);
    }

    /// Bytes came from the primary.
    pub(super) fn primary_heard(&mut self) {
        self.backup.heard = true;
    }

    /// Sends the HA role this step's link events, tagged with the link
    /// generation they belong to.
    pub(super) fn flush_to_role(&mut self, shard: &mut Shard) {
        if std::mem::take(&mut self.backup.heard) {
            self.backup.to_role.push(LinkEvent::PrimaryHeard);
        }
        if self.backup.to_role.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.backup.to_role);
        let generation = self.backup.generation;
        shard.send_ext(0, msg(Msg::ToRole { generation, events }));
    }

    /// The HA role opens our replication link to `brokers[index]` (link
    /// generation `generation`), saying we are `who`.
    pub(super) fn connect(
        &mut self,
        shard: &mut Shard,
        index: usize,
        address: String,
        who: BackupIdentity,
        generation: u64,
    ) {
        self.backup.who = Some(who);
        self.backup.generation = generation;
        if !self.backup.store_failing.is_empty() {
            // Not joining with a store that cannot keep what it is sent: the
            // role tries again later.
            return self.tell_role(LinkEvent::Failed { index });
        }
        let timeout = self.settings.heartbeat.max(Duration::from_secs(1));
        shard.request_connection(index as u64, address, timeout);
    }

    /// The HA role closes our replication link (promoted, or primary silent).
    pub(super) fn disconnect(&mut self, shard: &mut Shard, generation: u64) {
        self.backup.generation = generation;
        self.forget_stream();
        if let Some(out) = self.backup.outbound.take() {
            shard.conn_close(
                out.conn,
                ErrorCondition::new(condition::CONNECTION_FORCED, "replication link closed"),
            );
        }
    }

    /// An event of our replication connection.
    pub(super) fn outbound_event(&mut self, shard: &mut Shard, conn: u64, event: EngineEvent) {
        match event {
            EngineEvent::Opened(_) => self.outbound_opened(shard, conn),
            EngineEvent::Attached { attach, .. } => {
                let property = |key: &str| attach.properties.as_ref().and_then(|p| p.map_get(key));
                let epoch = property("tandem.ha-epoch")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                let cluster_id = property("tandem.ha-cluster-id")
                    .and_then(Value::as_str)
                    .filter(|id| crate::epoch_file::valid_cluster_id(id))
                    .map(str::to_owned);
                self.outbound_attached(shard, attach.source.is_some(), epoch, cluster_id);
            }
            EngineEvent::Transfer {
                delivery_id,
                payload,
                link,
                ..
            } => self.apply_delivery(shard, link.channel, delivery_id, &payload),
            EngineEvent::Detached { ref error, .. } | EngineEvent::Closed { ref error, .. } => {
                if let Some(e) = error {
                    // A refused login or a configuration that differs from the
                    // primary's is the operator's to fix: said once (not at
                    // every retry), the rest at debug.
                    let refused = e.condition == condition::UNAUTHORIZED_ACCESS
                        || e.condition == condition::PRECONDITION_FAILED;
                    let said = e.to_string();
                    if refused && self.backup.last_refusal.as_deref() != Some(said.as_str()) {
                        tracing::warn!("HA: the replication link was refused: {said}");
                        self.backup.last_refusal = Some(said);
                    } else {
                        tracing::debug!("HA: replication link closed: {e}");
                    }
                }
                if let (EngineEvent::Detached { .. }, Some(e)) = (&event, error) {
                    self.outbound_refused(e);
                }
                let dropped = error.as_ref().is_some_and(dropped_by_primary_said);
                self.outbound_lost(shard, conn);
                // The links' detaches come before the close that says why.
                if dropped && self.backup.lost_up == Some(conn) {
                    self.backup.lost_up = None;
                    tracing::warn!("HA: the primary dropped us: not ready until caught up again");
                    self.tell_role(LinkEvent::Diverged);
                }
            }
            _ => {}
        }
    }

    /// The replication connection opened: ask the shards what we hold (then
    /// attach), unless our copy cannot be trusted.
    fn outbound_opened(&mut self, shard: &mut Shard, conn: u64) {
        if self.backup.outbound.as_ref().is_none_or(|o| o.conn != conn) {
            return;
        }
        if self.backup.distrust_holdings {
            return self.outbound_begin(shard, conn, Vec::new());
        }
        self.backup.next_gather += 1;
        let id = self.backup.next_gather;
        for to in 0..shard.shards() {
            shard.send_ext(
                to,
                msg(Msg::Holdings {
                    origin: shard.id,
                    generation: id,
                }),
            );
        }
        self.backup.gathering = Some(Gathering {
            conn,
            id,
            left: shard.shards(),
            queues: Vec::new(),
        });
    }

    /// A shard said what it holds.
    pub(super) fn held(&mut self, shard: &mut Shard, id: u64, mut queues: ShardHoldings) {
        let Some(g) = self.backup.gathering.as_mut().filter(|g| g.id == id) else {
            return;
        };
        g.queues.append(&mut queues);
        g.left -= 1;
        if g.left > 0 {
            return;
        }
        let Some(g) = self.backup.gathering.take() else {
            return;
        };
        self.outbound_begin(shard, g.conn, g.queues);
    }

    /// Begin and attach, saying what we hold of each queue.
    fn outbound_begin(&mut self, shard: &mut Shard, conn: u64, mut holdings: ShardHoldings) {
        let Some(who) = self.backup.who.clone() else {
            return;
        };
        let Some(out) = self.backup.outbound.as_mut().filter(|o| o.conn == conn) else {
            return;
        };
        let Some(engine) = shard.engine(conn) else {
            return;
        };
        let channel = engine.begin();
        let source = replication_source();
        // Most queues first would be arbitrary: by name, so the cut is stable.
        holdings.sort_by(|a, b| a.0.cmp(&b.0));
        let budget = HOLDINGS_BUDGET.min(engine.remote_max_frame_size() as usize / 2);
        let mut used = 0;
        let mut said = Vec::new();
        for (queue, ranges) in holdings {
            used += queue.len() + 8 + ranges.len() * 18;
            if used > budget {
                tracing::warn!(
                    "HA: what we hold does not fit one attach frame: queues from '{queue}' on are caught up whole"
                );
                break;
            }
            said.push((Value::String(queue.to_string()), ranges_value(&ranges)));
        }
        let mut properties = vec![(Value::symbol("tandem.ha-holdings"), Value::Map(said))];
        properties.extend(identity_properties(&who));
        let properties = Value::Map(properties);
        let attach = Attach::receiver(format!("ha-replication-{}", who.broker_id), source)
            .with_properties(properties);
        out.link = engine.attach(channel, attach);
        shard.wrote_to(conn);
    }

    /// The replication link's attach was answered.
    fn outbound_attached(
        &mut self,
        shard: &mut Shard,
        accepted: bool,
        epoch: u64,
        cluster_id: Option<String>,
    ) {
        let Some(out) = self.backup.outbound.as_mut() else {
            return;
        };
        if !accepted {
            return; // the detach that follows says why; the link is then lost
        }
        out.up = true;
        self.backup.distrust_holdings = false;
        let (conn, index, link) = (out.conn, out.index, out.link);
        if let (Some(engine), Some(link)) = (shard.engine(conn), link) {
            engine.grant_credit(link, LINK_CREDIT, false);
            shard.wrote_to(conn);
        }
        self.tell_role(LinkEvent::Up {
            index,
            epoch,
            cluster_id,
        });
    }

    /// Our link was refused; note the peer's status if it said.
    fn outbound_refused(&mut self, error: &ErrorCondition) {
        let info = error.info.as_ref();
        let epoch = info
            .and_then(|i| i.map_get("tandem.ha-epoch"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let status = info
            .and_then(|i| i.map_get("tandem.ha-status"))
            .and_then(Value::as_str)
            .map(|s| (s.to_owned(), epoch));
        if let Some(out) = self.backup.outbound.as_mut() {
            out.refused_status = status;
        }
    }

    /// The replication link or its connection ended: one event for the HA
    /// role, whatever mix of detach, close and EOF reported it.
    fn outbound_lost(&mut self, shard: &mut Shard, conn: u64) {
        if self.backup.outbound.as_ref().is_none_or(|o| o.conn != conn) {
            return;
        }
        let Some(out) = self.backup.outbound.take() else {
            return;
        };
        self.forget_stream();
        self.backup.lost_up = out.up.then_some(conn);
        let event = match (out.up, out.refused_status) {
            (true, _) => {
                tracing::warn!("HA: lost the replication link to the primary");
                LinkEvent::Lost
            }
            (false, Some((status, epoch))) => LinkEvent::PeerStatus {
                index: out.index,
                status,
                epoch,
            },
            (false, None) => LinkEvent::Failed { index: out.index },
        };
        shard.conn_close(
            conn,
            ErrorCondition::new(condition::CONNECTION_FORCED, "replication link closed"),
        );
        self.tell_role(event);
    }

    /// Forgets what the last link delivered and did not apply.
    fn forget_stream(&mut self) {
        let b = &mut self.backup;
        b.applying.clear();
        b.unapplied.clear();
        b.stashed_binds.clear();
        b.pending.clear();
        b.waiting = None;
        b.touched.clear();
        b.to_store.clear();
        b.to_settle.clear();
        b.last_target = None;
        b.gathering = None;
    }

    /// Delivery `id` arrived on our replication link: its events are applied
    /// in order, after those of earlier deliveries; it is settled once all of
    /// it is applied.
    fn apply_delivery(&mut self, shard: &mut Shard, channel: u16, id: u32, payload: &Bytes) {
        if self.backup.outbound.as_ref().is_none_or(|o| !o.up) {
            return; // a delivery after the link failed: nothing more is applied
        }
        let events = match Event::decode_all(payload) {
            Ok(events) => events,
            Err(e) => {
                return self.diverged(shard, format!("undecodable replication delivery {id}: {e}"));
            }
        };
        // The delivery itself counts as one unapplied part until all its events
        // were handed on, so an owner that stores at once cannot settle it early.
        *self.backup.unapplied.entry((channel, id)).or_default() += 1;
        self.backup.pending.push_back(Incoming {
            delivery: (channel, id),
            events: events.into(),
        });
        self.run_stream(shard);
    }

    /// Applies pending events until the stream must wait or none are left.
    fn run_stream(&mut self, shard: &mut Shard) {
        while self.backup.waiting.is_none() {
            let Some(front) = self.backup.pending.front_mut() else {
                break;
            };
            let delivery = front.delivery;
            let Some(event) = front.events.pop_front() else {
                self.backup.pending.pop_front();
                self.send_to_store(shard);
                self.part_applied(delivery);
                continue;
            };
            // The owners get a delivery's messages in one message each; any
            // other event (a delete, a dequeue) must find them sent.
            if !matches!(event, Event::Enqueue { .. }) {
                self.send_to_store(shard);
            }
            if changes_configuration(&event) && !self.backup.touched.is_empty() {
                self.push_front(event);
                self.fence(shard);
                break;
            }
            if let Err(why) = self.apply_event(shard, delivery, event) {
                return self.diverged(shard, why);
            }
        }
        self.send_to_store(shard);
        self.top_up_credit(shard);
    }

    /// Puts an event back at the head of the stream.
    fn push_front(&mut self, event: Event) {
        if let Some(front) = self.backup.pending.front_mut() {
            front.events.push_front(event);
        }
    }

    /// Asks every owner sent something since the last fence to confirm it
    /// handled it: a configuration change travels from shard 0 on other rings
    /// and must not overtake it.
    fn fence(&mut self, shard: &mut Shard) {
        let owners = std::mem::take(&mut self.backup.touched);
        let origin = shard.id;
        let generation = self.backup.generation;
        for &owner in &owners {
            shard.send_ext(owner, msg(Msg::Fence { origin, generation }));
        }
        self.backup.waiting = Some(Wait::Fence { left: owners.len() });
    }

    /// An owner handled everything sent to it before the fence.
    pub(super) fn fenced(&mut self, shard: &mut Shard, generation: u64) {
        if generation != self.backup.generation {
            return;
        }
        if let Some(Wait::Fence { left }) = &mut self.backup.waiting {
            *left -= 1;
            if *left == 0 {
                self.backup.waiting = None;
                self.run_stream(shard);
            }
        }
    }

    /// Asks shard 0 to apply a change; the stream waits until it is applied
    /// everywhere.
    fn configure(&mut self, shard: &mut Shard, op: ConfigOp, then: AfterConfig) {
        self.backup.last_target = None;
        let req = shard.request_config(op);
        self.backup.waiting = Some(Wait::Config { req, then });
    }

    /// A change the stream asked for is applied on every shard.
    pub(super) fn configured(
        &mut self,
        shard: &mut Shard,
        req: u64,
        result: Result<ConfigDone, ErrorCondition>,
    ) {
        let then = match self.backup.waiting.take() {
            Some(Wait::Config { req: r, then }) if r == req => then,
            other => {
                self.backup.waiting = other;
                return;
            }
        };
        if let Err(e) = result {
            // As the primary had it applied already, this is a no-op here (a
            // delete of what a reset already removed).
            tracing::debug!("HA: replicated configuration change not applied: {e}");
        }
        let declared = match then {
            AfterConfig::Nothing => None,
            AfterConfig::Declared { name, purge } => {
                let purge = purge.then(|| Msg::Purge {
                    queue: name.as_str().into(),
                });
                Some((name, purge))
            }
            AfterConfig::Synced { name, next, keep } => {
                let retain = Msg::Retain {
                    queue: name.as_str().into(),
                    next,
                    keep,
                };
                Some((name, Some(retain)))
            }
        };
        if let Some((name, first)) = declared {
            if let Some(entry) = shard.catalogue.queues.get(name.as_str()) {
                let owner = entry.owner;
                if let Some(m) = first {
                    shard.send_ext(owner, msg(m));
                    self.touch(owner);
                }
            }
            let binds = self.backup.stashed_binds.remove(&name).unwrap_or_default();
            for bind in binds.into_iter().rev() {
                self.push_front(Event::Config(bind));
            }
        }
        self.run_stream(shard);
    }

    /// `owner` was sent part of the stream.
    fn touch(&mut self, owner: usize) {
        if !self.backup.touched.contains(&owner) {
            self.backup.touched.push(owner);
        }
    }

    /// Hands the owners the messages gathered so far.
    fn send_to_store(&mut self, shard: &mut Shard) {
        let delivery = self.backup.storing;
        let mut to_store = std::mem::take(&mut self.backup.to_store);
        for (owner, items) in to_store.drain(..) {
            let count = items.len();
            let batch = super::send_to_owner(shard, owner, items);
            self.backup.applying.insert(batch, (delivery, count));
            *self.backup.unapplied.entry(delivery).or_default() += 1;
            self.touch(owner);
        }
        self.backup.to_store = to_store;
    }

    /// A shard's store cannot write (`failing`), or can again. A backup that
    /// cannot keep what it is sent drops its link and rejoins (catching up)
    /// once every store writes again; the primary carries on without it.
    pub(super) fn store_health(&mut self, shard: &mut Shard, from: usize, failing: Option<String>) {
        match failing {
            Some(why) => {
                let first = self.backup.store_failing.is_empty();
                self.backup.store_failing.insert(from, why.clone());
                if let (true, Some(conn)) = (first, self.backup.outbound_conn()) {
                    tracing::error!(
                        "HA: our store cannot write ({why}): dropping the replication link, not ready until it can and we caught up again"
                    );
                    self.outbound_lost(shard, conn);
                    self.tell_role(LinkEvent::Diverged);
                }
            }
            None => {
                if self.backup.store_failing.remove(&from).is_some()
                    && self.backup.store_failing.is_empty()
                {
                    tracing::info!("HA: our store writes again: rejoining the cluster");
                }
            }
        }
    }

    /// An event of the stream could not be applied, so this copy of the
    /// primary can no longer be trusted. Logs why, settles nothing more, drops
    /// the link and tells the HA role, which stops being `ready` and looks for
    /// the primary again (the next link starts from a full reset).
    fn diverged(&mut self, shard: &mut Shard, why: String) {
        tracing::error!("HA: {why}; dropping the replication link to re-synchronise");
        self.backup.distrust_holdings = true;
        let Some(conn) = self.backup.outbound_conn() else {
            return;
        };
        self.outbound_lost(shard, conn);
        self.tell_role(LinkEvent::Diverged);
    }

    /// The queue an `enq` or `deq` event names, with its owner; `Ok(None)` for
    /// a queue the stream deleted, an error for one the backup never heard of.
    fn target(
        &mut self,
        shard: &Shard,
        queue: &str,
        what: impl FnOnce() -> String,
    ) -> Result<Option<(Arc<str>, usize)>, String> {
        if let Some((name, owner)) = &self.backup.last_target {
            if **name == *queue {
                return Ok(Some((name.clone(), *owner)));
            }
        }
        match shard.catalogue.queues.get_key_value(queue) {
            Some((name, entry)) => {
                self.backup.last_target = Some((name.clone(), entry.owner));
                Ok(Some((name.clone(), entry.owner)))
            }
            None if self.backup.deleted.contains(queue) => Ok(None),
            None => Err(format!("{} for unknown queue '{queue}'", what())),
        }
    }

    fn apply_event(
        &mut self,
        shard: &mut Shard,
        delivery: (u16, u32),
        event: Event,
    ) -> Result<(), String> {
        match event {
            Event::QueueReset { name, settings }
            | Event::Config(ConfigOp::ReplaceQueue { name, settings }) => {
                self.backup.deleted.remove(&name);
                let purge = shard.catalogue.queues.contains_key(name.as_str());
                let op = ConfigOp::ReplaceQueue {
                    name: name.clone(),
                    settings,
                };
                self.configure(shard, op, AfterConfig::Declared { name, purge });
            }
            Event::QueueSync {
                name,
                settings,
                next,
                keep,
            } => {
                self.backup.deleted.remove(&name);
                let op = ConfigOp::ReplaceQueue {
                    name: name.clone(),
                    settings,
                };
                self.configure(shard, op, AfterConfig::Synced { name, next, keep });
            }
            Event::Config(ConfigOp::DeleteQueue { name, .. }) => {
                self.backup.deleted.insert(name.clone());
                let op = ConfigOp::DeleteQueue {
                    name,
                    if_unused: false,
                };
                self.configure(shard, op, AfterConfig::Nothing);
            }
            Event::Config(op) => match bound_queue(&op) {
                // A binding waits for its queue to be declared.
                Some(queue) if !shard.catalogue.queues.contains_key(queue) => {
                    let queue = queue.to_owned();
                    self.backup.stashed_binds.entry(queue).or_default().push(op);
                }
                _ => self.configure(shard, op, AfterConfig::Nothing),
            },
            Event::Enqueue {
                queue,
                position,
                message,
            } => {
                let what = || format!("enq of position {position}");
                if let Some((queue, owner)) = self.target(shard, &queue, what)? {
                    self.backup.storing = delivery;
                    let item = ToStore {
                        queue,
                        position,
                        message,
                    };
                    push_for(&mut self.backup.to_store, owner, item);
                }
            }
            Event::Dequeue { queue, positions } => {
                let n = positions.len();
                let what = || format!("deq of {n} positions");
                if let Some((queue, owner)) = self.target(shard, &queue, what)? {
                    shard.send_ext(owner, msg(Msg::Dequeue { queue, positions }));
                    self.touch(owner);
                }
            }
            Event::Members { epoch, members } => {
                self.tell_role(LinkEvent::Members { epoch, members });
            }
            // Nothing to apply: settled once what came before is.
            Event::Sync { .. } => {}
            Event::Inventory { queues, exchanges } => {
                // What the primary no longer has is deleted here, in order,
                // before the rest of the stream.
                let mut deletes = Vec::new();
                for (name, entry) in &shard.catalogue.queues {
                    if !entry.settings.auto_delete && !queues.iter().any(|q| q.as_str() == &**name)
                    {
                        tracing::info!(
                            "HA: deleting queue '{name}', deleted on the primary while we were away"
                        );
                        deletes.push(ConfigOp::DeleteQueue {
                            name: name.to_string(),
                            if_unused: false,
                        });
                    }
                }
                for name in shard.catalogue.exchanges.keys() {
                    let built_in = BUILT_IN.iter().any(|(b, _)| *b == &**name);
                    if !built_in && !exchanges.iter().any(|x| x.as_str() == &**name) {
                        tracing::info!(
                            "HA: deleting exchange '{name}', deleted on the primary while we were away"
                        );
                        deletes.push(ConfigOp::DeleteExchange {
                            name: name.to_string(),
                        });
                    }
                }
                for op in deletes.into_iter().rev() {
                    self.push_front(Event::Config(op));
                }
            }
        }
        Ok(())
    }

    /// Settles this step's applied deliveries, consecutive ids in one frame.
    pub(super) fn flush_settles(&mut self, shard: &mut Shard) {
        if self.backup.to_settle.is_empty() {
            return;
        }
        let Some(conn) = self.backup.outbound_conn() else {
            self.backup.to_settle.clear();
            return;
        };
        let mut ids = std::mem::take(&mut self.backup.to_settle);
        if let Some(engine) = shard.engine(conn) {
            accept_in_ranges(engine, &mut ids);
            shard.wrote_to(conn);
        }
        ids.clear();
        self.backup.to_settle = ids;
    }

    /// Whether our replication link runs here.
    pub(super) fn is_outbound(&self, conn: u64) -> bool {
        self.backup.outbound_conn() == Some(conn)
    }

    fn top_up_credit(&mut self, shard: &mut Shard) {
        let Some(out) = &self.backup.outbound else {
            return;
        };
        let (conn, Some(link)) = (out.conn, out.link) else {
            return;
        };
        if let Some(engine) = shard.engine(conn) {
            if engine.credit(link) < LINK_CREDIT / 2 {
                engine.grant_credit(link, LINK_CREDIT, false);
                shard.wrote_to(conn);
            }
        }
    }

    /// An owner stored `stored` of a batch of replicated messages (the rest
    /// come one by one through [`Replication::stored_later`]), or could not
    /// store one of them (`missing`: its queue and position).
    pub(super) fn applied(
        &mut self,
        shard: &mut Shard,
        batch: u64,
        stored: usize,
        missing: Option<(Arc<str>, u64)>,
    ) {
        if let Some((queue, position)) = missing {
            if self.backup.applying.remove(&batch).is_some() {
                self.diverged(
                    shard,
                    format!(
                        "enq of position {position} on queue '{queue}' not stored: the queue is missing on its owner shard"
                    ),
                );
            }
            return;
        }
        self.batch_progress(batch, stored);
    }

    /// A held message of a batch is stored now (its store wrote it).
    pub(super) fn stored_later(&mut self, batch: u64) {
        self.batch_progress(batch, 1);
    }

    fn batch_progress(&mut self, batch: u64, stored: usize) {
        let Some((delivery, left)) = self.backup.applying.get_mut(&batch) else {
            return;
        };
        *left = left.saturating_sub(stored);
        if *left == 0 {
            let delivery = *delivery;
            self.backup.applying.remove(&batch);
            self.part_applied(delivery);
        }
    }

    /// One part of a replication delivery is applied; the last settles it.
    fn part_applied(&mut self, delivery: (u16, u32)) {
        if let Some(left) = self.backup.unapplied.get_mut(&delivery) {
            *left -= 1;
            if *left == 0 {
                self.backup.unapplied.remove(&delivery);
                self.backup.to_settle.push(delivery);
            }
        }
    }
}

/// Whether applying `event` changes the configuration (through shard 0).
fn changes_configuration(event: &Event) -> bool {
    matches!(
        event,
        Event::QueueReset { .. }
            | Event::QueueSync { .. }
            | Event::Config(_)
            | Event::Inventory { .. }
    )
}

/// The queue a binding binds.
fn bound_queue(op: &ConfigOp) -> Option<&str> {
    match op {
        ConfigOp::Bind { queue, .. } => Some(queue),
        _ => None,
    }
}

/// Who we are, as the attach of our replication link (or of an epoch probe)
/// says it: broker id, address, epoch, `ha-replicate`.
pub(super) fn identity_properties(who: &BackupIdentity) -> Vec<(Value, Value)> {
    let mut properties = vec![
        (
            Value::symbol("tandem.ha-broker-id"),
            Value::String(who.broker_id.clone()),
        ),
        (
            Value::symbol("tandem.ha-address"),
            Value::String(who.address.clone()),
        ),
        (Value::symbol("tandem.ha-epoch"), Value::Ulong(who.epoch)),
    ];
    if let Some(replicate) = &who.replicate {
        properties.push((
            Value::symbol("tandem.ha-replicate"),
            Value::String(replicate.clone()),
        ));
    }
    properties
}

/// The source of a replication link: the primary's replication node.
pub(super) fn replication_source() -> Source {
    Source {
        address: Some(NODE.into()),
        ..Default::default()
    }
}
