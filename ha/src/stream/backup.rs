//! A backup's shard 0: the outbound replication link to the primary, and
//! applying the stream. Configuration goes through the shard's own ordering
//! point at once (so later events find it); each `enq` goes to its queue's
//! owner, which stores it at the primary's position; a delivery is settled
//! once every `enq` in it is stored. A delivery that cannot be applied whole is
//! never settled: the link is dropped and the HA role told (`Diverged`), so the
//! backup stops being `ready` and starts over from a full reset.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use tandem_shards::amqp::codec::Value;
use tandem_shards::amqp::connection::{
    Connection, ConnectionConfig, Event as EngineEvent, LinkKey, Sasl,
};
use tandem_shards::amqp::performative::{condition, Attach, ErrorCondition, Source};
use tandem_shards::broker::{accept_in_ranges, ConfigOp, Shard};
use tandem_shards::exchange::BUILT_IN;

use super::codec::Event;
use super::{dropped_by_primary_said, msg, Msg, Replication, ToStore, NODE};
use crate::role::LinkEvent;

/// Credit a backup grants its link, topped up at half.
const LINK_CREDIT: u32 = 1000;

/// The backup's outbound replication connection.
struct Outbound {
    conn: u64,
    index: usize,
    link: Option<LinkKey>,
    /// The peer refused our link and said its status.
    refused_status: Option<String>,
    /// The peer accepted our link (so losing it means losing the primary).
    up: bool,
}

/// An `enq` event handed to the queue's owner to store.
struct Applying {
    /// The replication delivery it came in (channel, delivery id).
    delivery: (u16, u32),
    queue: Arc<str>,
    position: u64,
}

#[derive(Default)]
pub(super) struct BackupState {
    outbound: Option<Outbound>,
    /// The connection of the last link that was up when it was lost (its
    /// close may still say that the primary dropped us).
    lost_up: Option<u64>,
    /// Bindings waiting for their queue to be declared.
    stashed_binds: HashMap<String, Vec<ConfigOp>>,
    /// `enq` events waiting for their owner to store them, by token.
    applying: HashMap<u64, Applying>,
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
    next_apply: u64,
}

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
        let who = self.role.as_ref()?.identity();
        let s = &self.settings;
        let broker = &shard.settings;
        let backup_info = Value::Map(vec![
            (Value::symbol("broker-id"), Value::String(who.broker_id)),
            (Value::symbol("address"), Value::String(who.address)),
            (Value::symbol("epoch"), Value::Ulong(who.epoch)),
        ]);
        let credentials = s
            .username
            .clone()
            .map(|u| (u, s.password.clone().unwrap_or_default()));
        let cfg = ConnectionConfig {
            container_id: broker.container_id.clone(),
            max_frame_size: broker.max_frame_size,
            channel_max: 16,
            // The primary must be heard at least every heartbeat; twice that is silence.
            idle_timeout: Some(s.heartbeat * 2),
            properties: Some(Value::Map(vec![(
                Value::symbol("qpid.ha-backup"),
                backup_info,
            )])),
            max_message_size: broker.max_message_size,
            hostname: Some(address.to_owned()),
            sasl: Sasl::Client {
                credentials,
                skip: false,
            },
        };
        let mut engine = Connection::client(cfg, shard.now());
        engine.set_heartbeat(s.heartbeat);
        tracing::info!("HA: replication link connecting to {address}");
        Some(engine)
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
    pub(super) fn outbound_failed(&mut self, shard: &mut Shard, token: u64) {
        let index = token as usize;
        self.link_event_to_role(shard, LinkEvent::Failed { index });
    }

    /// The HA role closes our replication link (promoted, or primary silent).
    pub(super) fn disconnect(&mut self, shard: &mut Shard) {
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
            EngineEvent::Opened(_) => self.outbound_begin(shard, conn),
            EngineEvent::Attached { attach, .. } => {
                let epoch = attach
                    .properties
                    .as_ref()
                    .and_then(|p| p.map_get("tandem.ha-epoch"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                self.outbound_attached(shard, attach.source.is_some(), epoch);
            }
            EngineEvent::Transfer {
                delivery_id,
                payload,
                link,
                ..
            } => self.apply_delivery(shard, link.channel, delivery_id, &payload),
            EngineEvent::Detached { ref error, .. } | EngineEvent::Closed { ref error, .. } => {
                if let Some(e) = error {
                    tracing::debug!("HA: replication link closed: {e}");
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
                    self.link_event_to_role(shard, LinkEvent::Diverged);
                }
            }
            _ => {}
        }
    }

    /// The replication connection opened: begin and attach.
    fn outbound_begin(&mut self, shard: &mut Shard, conn: u64) {
        let Some(who) = self.role.as_ref().map(|r| r.identity()) else {
            return;
        };
        let Some(out) = self.backup.outbound.as_mut().filter(|o| o.conn == conn) else {
            return;
        };
        let Some(engine) = shard.engine(conn) else {
            return;
        };
        let channel = engine.begin();
        let source = Source {
            address: Some(NODE.into()),
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
        let attach = Attach::receiver(format!("ha-replication-{}", who.broker_id), source)
            .with_properties(properties);
        out.link = engine.attach(channel, attach);
        shard.wrote_to(conn);
    }

    /// The replication link's attach was answered.
    fn outbound_attached(&mut self, shard: &mut Shard, accepted: bool, epoch: u64) {
        let Some(out) = self.backup.outbound.as_mut() else {
            return;
        };
        if !accepted {
            return; // the detach that follows says why; the link is then lost
        }
        out.up = true;
        let (conn, index, link) = (out.conn, out.index, out.link);
        if let (Some(engine), Some(link)) = (shard.engine(conn), link) {
            engine.grant_credit(link, LINK_CREDIT, false);
            shard.wrote_to(conn);
        }
        self.link_event_to_role(shard, LinkEvent::Up { index, epoch });
    }

    /// Our link was refused; note the peer's status if it said.
    fn outbound_refused(&mut self, error: &ErrorCondition) {
        let status = error
            .info
            .as_ref()
            .and_then(|i| i.map_get("tandem.ha-status"))
            .and_then(Value::as_str)
            .map(str::to_owned);
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
        self.backup.applying.clear();
        self.backup.unapplied.clear();
        self.backup.stashed_binds.clear();
        self.backup.lost_up = out.up.then_some(conn);
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
        shard.conn_close(
            conn,
            ErrorCondition::new(condition::CONNECTION_FORCED, "replication link closed"),
        );
        self.link_event_to_role(shard, event);
    }

    /// Delivery `id` arrived on our replication link: applies its events in
    /// order; it is settled once every `enq` among them is stored.
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
        for event in events {
            // The owners get a delivery's messages in one message each; any
            // other event (a delete, a dequeue) must find them sent.
            if !matches!(event, Event::Enqueue { .. }) {
                self.send_to_store(shard);
            }
            if let Err(why) = self.apply_event(shard, channel, id, event) {
                self.backup.to_store.clear();
                return self.diverged(shard, why);
            }
        }
        self.send_to_store(shard);
        self.part_applied((channel, id));
        self.top_up_credit(shard);
    }

    /// Hands the owners the messages gathered so far.
    fn send_to_store(&mut self, shard: &mut Shard) {
        let origin = shard.id;
        for (owner, items) in self.backup.to_store.drain(..) {
            shard.send_ext(owner, msg(Msg::Enqueue { items, origin }));
        }
    }

    /// An event of the stream could not be applied, so this copy of the
    /// primary can no longer be trusted. Logs why, settles nothing more, drops
    /// the link and tells the HA role, which stops being `ready` and looks for
    /// the primary again (the next link starts from a full reset).
    fn diverged(&mut self, shard: &mut Shard, why: String) {
        tracing::error!("HA: {why}; dropping the replication link to re-synchronise");
        let Some(conn) = self.backup.outbound_conn() else {
            return;
        };
        self.backup.to_settle.clear();
        self.outbound_lost(shard, conn);
        self.link_event_to_role(shard, LinkEvent::Diverged);
    }

    /// The queue an `enq` or `deq` event names, with its owner; `Ok(None)` for
    /// a queue the stream deleted, an error for one the backup never heard of.
    fn target(
        &self,
        shard: &Shard,
        queue: &str,
        what: impl FnOnce() -> String,
    ) -> Result<Option<(Arc<str>, usize)>, String> {
        match shard.catalogue.queues.get_key_value(queue) {
            Some((name, entry)) => Ok(Some((name.clone(), entry.owner))),
            None if self.backup.deleted.contains(queue) => Ok(None),
            None => Err(format!("{} for unknown queue '{queue}'", what())),
        }
    }

    fn apply_event(
        &mut self,
        shard: &mut Shard,
        channel: u16,
        id: u32,
        event: Event,
    ) -> Result<(), String> {
        match event {
            Event::QueueReset { name, settings }
            | Event::Config(ConfigOp::ReplaceQueue { name, settings }) => {
                self.backup.deleted.remove(&name);
                let reset = shard.catalogue.queues.contains_key(name.as_str());
                shard.apply_config_now(ConfigOp::ReplaceQueue {
                    name: name.clone(),
                    settings,
                });
                if reset {
                    if let Some(entry) = shard.catalogue.queues.get(name.as_str()) {
                        let owner = entry.owner;
                        let queue = name.clone().into();
                        shard.send_ext(owner, msg(Msg::Purge { queue }));
                    }
                }
                for bind in self.backup.stashed_binds.remove(&name).unwrap_or_default() {
                    self.apply_binding(shard, bind);
                }
            }
            Event::Config(ConfigOp::DeleteQueue { name, .. }) => {
                self.backup.deleted.insert(name.clone());
                shard.apply_config_now(ConfigOp::DeleteQueue {
                    name,
                    if_unused: false,
                });
            }
            Event::Config(bind @ (ConfigOp::Bind { .. } | ConfigOp::Unbind { .. })) => {
                self.apply_binding(shard, bind)
            }
            Event::Config(op) => shard.apply_config_now(op),
            Event::Enqueue {
                queue,
                position,
                message,
            } => {
                let what = || format!("enq of position {position}");
                if let Some((name, owner)) = self.target(shard, &queue, what)? {
                    let token = self.backup.next_apply;
                    self.backup.next_apply += 1;
                    let applying = Applying {
                        delivery: (channel, id),
                        queue: name.clone(),
                        position,
                    };
                    self.backup.applying.insert(token, applying);
                    *self.backup.unapplied.entry((channel, id)).or_default() += 1;
                    let item = ToStore {
                        queue: name,
                        position,
                        message,
                        token,
                    };
                    match self.backup.to_store.iter_mut().find(|(o, _)| *o == owner) {
                        Some((_, items)) => items.push(item),
                        None => self.backup.to_store.push((owner, vec![item])),
                    }
                }
            }
            Event::Dequeue { queue, positions } => {
                let n = positions.len();
                let what = || format!("deq of {n} positions");
                if let Some((queue, owner)) = self.target(shard, &queue, what)? {
                    shard.send_ext(owner, msg(Msg::Dequeue { queue, positions }));
                }
            }
            Event::Members { epoch, members } => {
                self.link_event_to_role(shard, LinkEvent::Members { epoch, members });
            }
            Event::Inventory { queues, exchanges } => {
                let stale_queues: Vec<String> = shard
                    .catalogue
                    .queues
                    .iter()
                    .filter(|(n, e)| {
                        !e.settings.auto_delete && !queues.iter().any(|q| q.as_str() == &***n)
                    })
                    .map(|(n, _)| n.to_string())
                    .collect();
                let stale_exchanges: Vec<String> = shard
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
                    self.backup.deleted.insert(name.clone());
                    shard.apply_config_now(ConfigOp::DeleteQueue {
                        name,
                        if_unused: false,
                    });
                }
                for name in stale_exchanges {
                    tracing::info!(
                        "HA: deleting exchange '{name}', deleted on the primary while we were away"
                    );
                    shard.apply_config_now(ConfigOp::DeleteExchange { name });
                }
            }
        }
        Ok(())
    }

    /// A binding, unless its queue is not declared yet: then it waits for it.
    fn apply_binding(&mut self, shard: &mut Shard, op: ConfigOp) {
        if let ConfigOp::Bind { queue, .. } = &op {
            if !shard.catalogue.queues.contains_key(queue.as_str()) {
                let queue = queue.clone();
                self.backup.stashed_binds.entry(queue).or_default().push(op);
                return;
            }
        }
        shard.apply_config_now(op);
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

    /// An owner stored a replicated message, or could not.
    pub(super) fn applied(&mut self, shard: &mut Shard, token: u64, stored: bool) {
        let Some(a) = self.backup.applying.remove(&token) else {
            return;
        };
        if stored {
            self.part_applied(a.delivery);
        } else {
            self.diverged(
                shard,
                format!(
                    "enq of position {} on queue '{}' not stored: the queue is missing on its owner shard",
                    a.position, a.queue
                ),
            );
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
