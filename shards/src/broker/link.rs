//! The connection side of a shard: what each link of a client connection means
//! (publisher to a queue or exchange, consumer or browser of a queue), how
//! publishes are routed and settled once stored, and how deliveries from queue
//! owners reach the wire within the client's credit.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::{consumer_ref, delivery_tag, ConfigDone, ConfigOp, Shard, ShardMsg};
use crate::amqp::codec::Value;
use crate::amqp::connection::{Connection, Event, LinkKey};
use crate::amqp::message;
use crate::amqp::performative::{
    condition, Attach, DeliveryState, Disposition, ErrorCondition, Role, Source, Target,
};
use crate::exchange::{headers_key, BindingKey, RoutingInfo};
use crate::queue::{AckTo, ConsumerRef, Delivery, QueueSettings, Settlement};

/// Filter descriptors of the legacy AMQP 0-10 binding filters (symbol and code).
const DIRECT_FILTER: (&str, u64) = (
    "apache.org:legacy-amqp-direct-binding:string",
    0x0000_468c_0000_0000,
);
const TOPIC_FILTER: (&str, u64) = (
    "apache.org:legacy-amqp-topic-binding:string",
    0x0000_468c_0000_0001,
);
const HEADERS_FILTER: (&str, u64) = (
    "apache.org:legacy-amqp-headers-binding:map",
    0x0000_468c_0000_0002,
);

/// Where a publishing link's messages go.
#[derive(Debug, Clone)]
enum Dest {
    Queue {
        name: Arc<str>,
        owner: usize,
    },
    Exchange(Arc<str>),
    /// The anonymous relay: each message's `to` names its node.
    Anonymous,
    /// The management node: each message is a request.
    Management,
}

enum LinkRole {
    /// Waiting for shard 0 to declare the node.
    Pending,
    Publisher {
        dest: Dest,
        /// Publishes received and not yet stored everywhere.
        outstanding: u32,
    },
    Consumer {
        queue: Arc<str>,
        owner: usize,
        /// Credit asked of the queue whose deliveries have not arrived yet.
        requested: u32,
        /// Deliveries that arrived after the client lowered its credit.
        buffer: VecDeque<Delivery>,
        draining: bool,
    },
}

/// Something waiting for shard 0's answer.
pub(super) enum Waiting {
    Attach {
        conn: u64,
        link: LinkKey,
        attach: Box<Attach>,
    },
    /// A management request's configuration change; the reply goes here.
    Management(super::mgmt::ReplyTo),
}

/// A publish waiting for its queues' acks.
pub(super) struct PendingAck {
    conn: u64,
    link: LinkKey,
    delivery_id: u32,
    /// The client sent it pre-settled: only credit is replenished.
    presettled: bool,
    remaining: u32,
    rejected: Option<ErrorCondition>,
}

/// A delivery to a client, until the client settles it.
struct OutDelivery {
    link: LinkKey,
    queue: Arc<str>,
    owner: usize,
    position: u64,
}

pub(super) struct Conn {
    pub(super) engine: Connection,
    peer: String,
    user: Option<String>,
    container: String,
    /// The peer's open arrived.
    pub(super) opened: bool,
    /// An admin connection (`qpid.ha-admin`) or another broker's link.
    pub(super) admin: bool,
    /// Our own outbound replication connection (a backup's link to its primary).
    pub(super) outbound: bool,
    /// Backups' replication links hosted on this connection (primary side).
    pub(super) replica_links: HashMap<LinkKey, super::replica::ReplicaLink>,
    messages_in: u64,
    messages_out: u64,
    links: HashMap<LinkKey, LinkRole>,
    /// Unsettled deliveries we sent, by (channel, delivery id).
    out: HashMap<(u16, u32), OutDelivery>,
    /// Publishes to settle as accepted at the end of this step, by (channel, id).
    accepted: Vec<(u16, u32)>,
}

impl Conn {
    pub(super) fn new(engine: Connection, peer: String) -> Conn {
        Conn {
            engine,
            peer,
            user: None,
            container: String::new(),
            opened: false,
            admin: false,
            outbound: false,
            replica_links: HashMap::new(),
            messages_in: 0,
            messages_out: 0,
            links: HashMap::new(),
            out: HashMap::new(),
            accepted: Vec::new(),
        }
    }
}

fn not_found(what: &str) -> ErrorCondition {
    ErrorCondition::new(condition::NOT_FOUND, format!("node '{what}' not found"))
}

impl Shard {
    // -----------------------------------------------------------------------
    // Socket events (called by the runtime)

    /// Bytes from a client's socket.
    pub fn conn_input(&mut self, id: u64, buf: &mut BytesMut, now: Instant) {
        let (outbound, hosts_replicas) = match self.conns.get_mut(&id) {
            Some(c) => {
                c.engine.input(buf, now);
                (c.outbound, !c.replica_links.is_empty())
            }
            None => (false, false),
        };
        if hosts_replicas {
            self.replica_heard(id, now);
        }
        if outbound {
            self.ha_link_event(super::hooks::LinkEvent::PrimaryHeard);
        }
        self.conn_events(id);
    }

    /// The client's socket reached end of file or failed.
    pub fn conn_eof(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.engine.input_eof();
        }
        self.conn_events(id);
    }

    /// Timer: heartbeats and idle timeout; returns the next deadline.
    pub fn conn_tick(&mut self, id: u64, now: Instant) -> Option<Instant> {
        let next = self.conns.get_mut(&id).and_then(|c| c.engine.tick(now));
        self.conn_events(id);
        next
    }

    /// Takes the bytes to write to a client's socket.
    pub fn conn_output(&mut self, id: u64) -> Option<Bytes> {
        let c = self.conns.get_mut(&id)?;
        if c.engine.has_output() {
            Some(c.engine.output().split().freeze())
        } else {
            None
        }
    }

    pub fn conn_has_output(&self, id: u64) -> bool {
        self.conns.get(&id).is_some_and(|c| c.engine.has_output())
    }

    pub fn conn_wrote(&mut self, id: u64, now: Instant) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.engine.wrote(now);
        }
    }

    /// True when the connection is over (close exchanged or socket gone).
    pub fn conn_closed(&self, id: u64) -> bool {
        self.conns
            .get(&id)
            .map(|c| c.engine.is_closed())
            .unwrap_or(true)
    }

    /// True while we wait for the client to answer our close.
    pub fn conn_closing(&self, id: u64) -> bool {
        self.conns.get(&id).is_some_and(|c| c.engine.is_closing())
    }

    /// Closes a client connection from our side (shutdown, admission refusal).
    pub fn conn_close(&mut self, id: u64, error: ErrorCondition) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.engine.close_with(error);
        }
        self.conn_events(id);
    }

    /// Management's view of this shard's connections.
    pub fn connection_infos(&self) -> Vec<super::ConnectionInfo> {
        let mut v: Vec<_> = self
            .conns
            .iter()
            .map(|(id, c)| {
                let (frames_in, frames_out) = c.engine.frame_counts();
                super::ConnectionInfo {
                    shard: self.id,
                    id: *id,
                    address: c.peer.clone(),
                    user: c.user.clone(),
                    container: c.container.clone(),
                    frames_in,
                    frames_out,
                    messages_in: c.messages_in,
                    messages_out: c.messages_out,
                }
            })
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }

    pub fn conn_ids(&self) -> Vec<u64> {
        self.conns.keys().copied().collect()
    }

    /// Forgets a connection whose socket is closed.
    pub fn remove_connection(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            if !c.engine.is_closed() {
                c.engine.input_eof();
            }
        }
        self.conn_events(id);
        self.conns.remove(&id);
        self.dirty.retain(|c| *c != id);
    }

    fn conn_events(&mut self, id: u64) {
        loop {
            let Some(ev) = self.conns.get_mut(&id).and_then(|c| c.engine.poll_event()) else {
                break;
            };
            self.on_event(id, ev);
        }
        // Output to write, or a closed connection whose writer must finish up.
        if self
            .conns
            .get(&id)
            .is_some_and(|c| c.engine.has_output() || c.engine.is_closed())
        {
            self.mark_dirty(id);
        }
    }

    fn on_event(&mut self, id: u64, ev: Event) {
        match ev {
            Event::Authenticated { user } => {
                tracing::debug!(conn = id, ?user, "authenticated");
                if let Some(c) = self.conns.get_mut(&id) {
                    c.user = user;
                }
            }
            Event::Opened(_) if self.conns.get(&id).is_some_and(|c| c.outbound) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.opened = true;
                }
                self.outbound_opened();
            }
            Event::Attached { attach, .. } if self.conns.get(&id).is_some_and(|c| c.outbound) => {
                let epoch = attach
                    .properties
                    .as_ref()
                    .and_then(|p| p.map_get("tandem.ha-epoch"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                self.outbound_attached(attach.source.is_some(), epoch);
            }
            Event::Transfer {
                delivery_id,
                payload,
                link,
                ..
            } if self.conns.get(&id).is_some_and(|c| c.outbound) => {
                self.apply_replica_event(link.channel, delivery_id, &payload);
            }
            Event::Detached { .. } | Event::Closed { .. }
                if self.conns.get(&id).is_some_and(|c| c.outbound) =>
            {
                if let Event::Closed { error: Some(e), .. }
                | Event::Detached { error: Some(e), .. } = &ev
                {
                    tracing::debug!("HA: replication link closed: {e}");
                }
                if let Event::Detached { error: Some(e), .. } = &ev {
                    self.outbound_refused(e);
                }
                self.outbound_lost(id);
            }
            Event::Opened(open) => {
                let admin = super::hooks::is_admin_connection(open.properties.as_ref());
                if let Some(c) = self.conns.get_mut(&id) {
                    tracing::debug!(conn = id, peer = %c.peer, container = %open.container_id, admin, "connection opened");
                    c.container = open.container_id;
                    c.opened = true;
                    c.admin = admin;
                }
                if let super::hooks::Admission::AdminOnly { reason } = &self.admission {
                    if !admin {
                        let error =
                            ErrorCondition::new(condition::CONNECTION_FORCED, reason.clone());
                        if let Some(c) = self.conns.get_mut(&id) {
                            tracing::info!(conn = id, peer = %c.peer, "refusing client: {reason}");
                            c.engine.abort(error);
                        }
                    }
                }
            }
            Event::Begun { .. } | Event::Ended { .. } => {}
            Event::Attached { link, attach } => self.on_attach(id, link, attach),
            Event::Transfer {
                link,
                delivery_id,
                settled,
                payload,
                ..
            } => self.on_publish(id, link, delivery_id, settled, payload),
            Event::Disposition {
                channel,
                disposition,
            } => {
                let hosts_replicas = self
                    .conns
                    .get(&id)
                    .is_some_and(|c| !c.replica_links.is_empty());
                if hosts_replicas && disposition.role == Role::Receiver && disposition.settled {
                    let last = disposition.last.unwrap_or(disposition.first);
                    self.on_replica_settled(id, disposition.first, last);
                }
                self.on_disposition(id, channel, disposition)
            }
            Event::Credit { link, .. }
                if self
                    .conns
                    .get(&id)
                    .is_some_and(|c| c.replica_links.contains_key(&link)) =>
            {
                self.drain_replica_link(id, link);
            }
            Event::Credit { link, drain, .. } => self.on_credit(id, link, drain),
            Event::Detached { link, .. }
                if self
                    .conns
                    .get(&id)
                    .is_some_and(|c| c.replica_links.contains_key(&link)) =>
            {
                let member = self
                    .conns
                    .get_mut(&id)
                    .and_then(|c| c.replica_links.remove(&link))
                    .and_then(|rl| rl.member);
                if let Some(member) = member {
                    self.send(0, ShardMsg::BackupGone { member });
                }
            }
            Event::Detached { link, .. } => self.on_detached(id, link),
            Event::Closed { error, by_peer } => {
                if let Some(e) = error {
                    let peer = self
                        .conns
                        .get(&id)
                        .map(|c| c.peer.clone())
                        .unwrap_or_default();
                    if by_peer {
                        tracing::debug!(conn = id, %peer, "peer closed: {e}");
                    } else {
                        tracing::info!(conn = id, %peer, "closing connection: {e}");
                    }
                }
            }
        }
    }

    // -----------------------------------------------------------------------
    // Attach

    fn on_attach(&mut self, id: u64, link: LinkKey, attach: Attach) {
        let client_sends = attach.role == Role::Sender;
        let (address, dynamic) = if client_sends {
            let t = attach.target.as_ref();
            (
                t.and_then(|t| t.address.clone()),
                t.is_some_and(|t| t.dynamic),
            )
        } else {
            let s = attach.source.as_ref();
            (
                s.and_then(|s| s.address.clone()),
                s.is_some_and(|s| s.dynamic),
            )
        };
        if self.admin_only() {
            if let Err(e) = self.backup_allows(&attach, client_sends, dynamic, address.as_deref()) {
                return self.refuse(id, link, &attach, e);
            }
        }
        if dynamic {
            let op = ConfigOp::DeclareQueue {
                name: None,
                settings: QueueSettings {
                    auto_delete: true,
                    ..self.settings.default_queue.clone()
                },
                bind: None,
                strict: false,
            };
            return self.request_for_attach(id, link, attach, op);
        }
        let address = address.unwrap_or_default();
        if address == crate::replica::NODE && !client_sends {
            return self.host_replica_link(id, link, &attach);
        }
        if address == crate::management::NODE {
            if client_sends {
                return self.start_publisher(id, link, &attach, Dest::Management, None);
            }
            let error = ErrorCondition::new(
                condition::NOT_ALLOWED,
                "$management takes requests; receive replies on a reply-to queue (e.g. a dynamic one)",
            );
            return self.refuse(id, link, &attach, error);
        }
        if address.is_empty() {
            if client_sends {
                return self.start_publisher(id, link, &attach, Dest::Anonymous, None);
            }
            return self.refuse(
                id,
                link,
                &attach,
                ErrorCondition::new(
                    condition::INVALID_FIELD,
                    "a receiving link needs a source address",
                ),
            );
        }
        if let Some(ex) = self.catalogue.exchanges.get(address.as_str()) {
            let name = ex.name.clone();
            if client_sends {
                return self.start_publisher(id, link, &attach, Dest::Exchange(name), None);
            }
            let key = match subscription_key(attach.source.as_ref()) {
                Ok(k) => k,
                Err(e) => return self.refuse(id, link, &attach, e),
            };
            let op = ConfigOp::DeclareQueue {
                name: None,
                settings: QueueSettings {
                    auto_delete: true,
                    ..self.settings.default_queue.clone()
                },
                bind: Some((name.to_string(), key)),
                strict: false,
            };
            return self.request_for_attach(id, link, attach, op);
        }
        if let Some((name, entry)) = self.catalogue.queues.get_key_value(address.as_str()) {
            let (name, owner) = (name.clone(), entry.owner);
            return self.start_queue_link(id, link, &attach, name, owner);
        }
        if !self.settings.auto_create_queues {
            return self.refuse(id, link, &attach, not_found(&address));
        }
        let settings = match node_settings(&self.settings.default_queue, &attach, client_sends) {
            Ok(s) => s,
            Err(e) => return self.refuse(id, link, &attach, e),
        };
        let op = ConfigOp::DeclareQueue {
            name: Some(address),
            settings,
            bind: None,
            strict: false,
        };
        self.request_for_attach(id, link, attach, op)
    }

    /// On a backup, admin connections are read-only: management requests, their
    /// reply queues, browsing existing queues and the replication link only.
    fn backup_allows(
        &self,
        attach: &Attach,
        client_sends: bool,
        dynamic: bool,
        address: Option<&str>,
    ) -> Result<(), ErrorCondition> {
        let browsing = attach
            .source
            .as_ref()
            .is_some_and(|s| s.distribution_mode.as_deref() == Some("copy"));
        let allowed = match (client_sends, address) {
            (true, Some(a)) => a == crate::management::NODE,
            (false, _) if dynamic => true,
            (false, Some(a)) => {
                a == crate::replica::NODE || (browsing && self.catalogue.queues.contains_key(a))
            }
            _ => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(ErrorCondition::new(
                condition::NOT_ALLOWED,
                "this broker is an HA backup: admin connections may manage, browse and \
                 read, not send, consume or create; use the primary",
            ))
        }
    }

    /// A backup attaches its replication link: only brokers' and admin
    /// connections may; shard 0 decides whether the HA role accepts it.
    fn host_replica_link(&mut self, id: u64, link: LinkKey, attach: &Attach) {
        let admin = self.conns.get(&id).is_some_and(|c| c.admin);
        if !admin {
            let error = ErrorCondition::new(
                condition::UNAUTHORIZED_ACCESS,
                "only another broker of the cluster may replicate (qpid.ha-backup)",
            );
            return self.refuse(id, link, attach, error);
        }
        let Some(who) = super::replica::identity_from(attach.properties.as_ref()) else {
            let error = ErrorCondition::new(
                condition::INVALID_FIELD,
                "replication link without broker identity",
            );
            return self.refuse(id, link, attach, error);
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        // The attach is answered once the HA role accepted the backup.
        c.replica_links.insert(
            link,
            super::replica::ReplicaLink {
                member: None,
                pending_attach: Some(Box::new(attach.clone())),
                backlog: VecDeque::new(),
                unsettled: HashMap::new(),
                last_heard: None,
            },
        );
        let sink = super::ReplicaSink {
            member: 0,
            shard: self.id,
            conn: id,
            link,
        };
        self.send(0, ShardMsg::BackupAttached { sink, who });
    }

    fn request_for_attach(&mut self, id: u64, link: LinkKey, attach: Attach, op: ConfigOp) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.links.insert(link, LinkRole::Pending);
        }
        let req = self.next_req;
        self.next_req += 1;
        self.requests.insert(
            req,
            Waiting::Attach {
                conn: id,
                link,
                attach: Box::new(attach),
            },
        );
        self.send(
            0,
            ShardMsg::ConfigRequest {
                origin: self.id,
                req,
                op,
            },
        );
    }

    pub(super) fn on_config_reply(&mut self, req: u64, result: Result<ConfigDone, ErrorCondition>) {
        let Some(waiting) = self.requests.remove(&req) else {
            return;
        };
        let (conn, link, attach) = match waiting {
            Waiting::Attach { conn, link, attach } => (conn, link, attach),
            Waiting::Management(reply) => return self.on_management_config_reply(reply, result),
        };
        // The link may have gone while we waited.
        let still_pending = self
            .conns
            .get(&conn)
            .is_some_and(|c| matches!(c.links.get(&link), Some(LinkRole::Pending)));
        if !still_pending {
            return;
        }
        match result {
            Ok(ConfigDone {
                queue: Some((name, owner)),
            }) => self.start_queue_link(conn, link, &attach, name, owner),
            Ok(ConfigDone { queue: None }) => self.refuse(
                conn,
                link,
                &attach,
                ErrorCondition::new(condition::INTERNAL_ERROR, "no queue declared"),
            ),
            Err(e) => self.refuse(conn, link, &attach, e),
        }
        self.conn_events(conn);
    }

    fn refuse(&mut self, id: u64, link: LinkKey, attach: &Attach, error: ErrorCondition) {
        if let Some(c) = self.conns.get_mut(&id) {
            tracing::debug!(conn = id, link = %attach.name, "refusing attach: {error}");
            c.links.remove(&link);
            c.engine.refuse_attach(link, attach, error);
            self.mark_dirty(id);
        }
    }

    fn start_queue_link(
        &mut self,
        id: u64,
        link: LinkKey,
        attach: &Attach,
        name: Arc<str>,
        owner: usize,
    ) {
        let props = Some(Value::Map(vec![(
            Value::symbol("tandem.queue-shard"),
            Value::Uint(owner as u32),
        )]));
        if attach.role == Role::Sender {
            return self.start_publisher(id, link, attach, Dest::Queue { name, owner }, props);
        }
        let source = attach.source.clone().unwrap_or_default();
        let browse = source.distribution_mode.as_deref() == Some("copy");
        // The client asked for pre-settled deliveries (at-most-once).
        let settled = attach.snd_settle_mode == Some(1);
        let reply_source = Source {
            address: Some(if source.dynamic {
                name.to_string()
            } else {
                source.address.clone().unwrap_or_else(|| name.to_string())
            }),
            ..source
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.engine.accept_attach(
            link,
            attach,
            Some(reply_source),
            attach.target.clone(),
            props,
        );
        c.links.insert(
            link,
            LinkRole::Consumer {
                queue: name.clone(),
                owner,
                requested: 0,
                buffer: VecDeque::new(),
                draining: false,
            },
        );
        self.mark_dirty(id);
        let consumer = consumer_ref(self.id, id, link);
        self.send(
            owner,
            ShardMsg::Subscribe {
                queue: name,
                consumer,
                browse,
                settled,
            },
        );
        // Credit the client granted before our attach reply is in the engine already.
        if self
            .conns
            .get(&id)
            .is_some_and(|c| c.engine.credit(link) > 0)
        {
            self.on_credit(id, link, false);
        }
    }

    fn start_publisher(
        &mut self,
        id: u64,
        link: LinkKey,
        attach: &Attach,
        dest: Dest,
        props: Option<Value>,
    ) {
        let window = self.settings.link_credit;
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let target = match (&dest, attach.target.clone()) {
            (Dest::Queue { name, .. }, Some(t)) if t.dynamic => Some(Target {
                address: Some(name.to_string()),
                ..t
            }),
            (_, t) => t,
        };
        c.engine
            .accept_attach(link, attach, attach.source.clone(), target, props);
        c.links.insert(
            link,
            LinkRole::Publisher {
                dest,
                outstanding: 0,
            },
        );
        c.engine.grant_credit(link, window, false);
        self.mark_dirty(id);
    }

    // -----------------------------------------------------------------------
    // Publishing

    fn on_publish(
        &mut self,
        id: u64,
        link: LinkKey,
        delivery_id: u32,
        settled: bool,
        payload: Bytes,
    ) {
        let dest = match self.conns.get(&id).and_then(|c| c.links.get(&link)) {
            Some(LinkRole::Publisher { dest, .. }) => dest.clone(),
            _ => return,
        };
        if payload.is_empty() {
            // A message has at least a body section: an empty transfer is not one
            // (Proton sends those when it settles deliveries it never sent).
            if !settled {
                if let Some(c) = self.conns.get_mut(&id) {
                    let state = DeliveryState::Rejected(Some(ErrorCondition::new(
                        condition::DECODE_ERROR,
                        "empty message: a message needs at least a body section",
                    )));
                    c.engine.disposition(
                        link.channel,
                        Role::Receiver,
                        delivery_id,
                        delivery_id,
                        true,
                        Some(&state),
                    );
                }
                self.mark_dirty(id);
            }
            return;
        }
        self.route_buf.clear();
        let mut targets = std::mem::take(&mut self.route_buf);
        let routed = match &dest {
            Dest::Queue { name, .. } => {
                targets.push(name.clone());
                Ok(())
            }
            Dest::Exchange(ex) => self.route_exchange(ex, &payload, &mut targets),
            Dest::Anonymous => self.route_anonymous(&payload, &mut targets),
            Dest::Management => Ok(()),
        };
        if let Dest::Exchange(ex) = &dest {
            let stats = self.exchange_stats.entry(ex.clone()).or_default();
            if targets.is_empty() {
                stats.dropped += 1;
            } else {
                stats.routed += 1;
            }
        }
        if let Some(c) = self.conns.get_mut(&id) {
            c.messages_in += 1;
        }
        if matches!(dest, Dest::Management) {
            self.on_management(&payload);
        }
        let token = self.next_token;
        self.next_token += 1;
        let mut pending = PendingAck {
            conn: id,
            link,
            delivery_id,
            presettled: settled,
            remaining: targets.len() as u32,
            rejected: routed.err(),
        };
        if pending.rejected.is_some() {
            pending.remaining = 0;
        }
        if let Some(LinkRole::Publisher { outstanding, .. }) =
            self.conns.get_mut(&id).and_then(|c| c.links.get_mut(&link))
        {
            *outstanding += 1;
        }
        if pending.remaining == 0 {
            self.finish_publish(pending);
        } else {
            self.acks.insert(token, pending);
            let ack = Some(AckTo {
                shard: self.id,
                token,
            });
            for queue in targets.drain(..) {
                let owner = match &dest {
                    Dest::Queue { owner, .. } => *owner,
                    _ => self
                        .catalogue
                        .queues
                        .get(&queue)
                        .map(|q| q.owner)
                        .unwrap_or(0),
                };
                self.send(
                    owner,
                    ShardMsg::Enqueue {
                        queue,
                        message: payload.clone(),
                        ack,
                    },
                );
            }
        }
        self.route_buf = targets;
    }

    pub(super) fn route_exchange(
        &self,
        exchange: &str,
        payload: &Bytes,
        targets: &mut Vec<Arc<str>>,
    ) -> Result<(), ErrorCondition> {
        let Some(ex) = self.catalogue.exchanges.get(exchange) else {
            return Err(not_found(exchange));
        };
        let bad = |e: crate::amqp::codec::CodecError| {
            ErrorCondition::new(condition::DECODE_ERROR, format!("message: {e}"))
        };
        let map = message::scan(payload).map_err(bad)?;
        let subject = message::subject(payload, &map).map_err(bad)?;
        let props = if ex.kind == crate::exchange::ExchangeType::Headers {
            message::application_properties(payload, &map).map_err(bad)?
        } else {
            None
        };
        ex.route(
            &RoutingInfo {
                subject: subject.as_deref(),
                properties: props.as_ref(),
            },
            targets,
        );
        Ok(())
    }

    fn route_anonymous(
        &self,
        payload: &Bytes,
        targets: &mut Vec<Arc<str>>,
    ) -> Result<(), ErrorCondition> {
        let decoded = message::DecodedMessage::decode(payload)
            .map_err(|e| ErrorCondition::new(condition::DECODE_ERROR, format!("message: {e}")))?;
        let to = to_address(payload).unwrap_or_default();
        let _ = decoded;
        if let Some((name, _)) = self.catalogue.queues.get_key_value(to.as_str()) {
            targets.push(name.clone());
            return Ok(());
        }
        if self.catalogue.exchanges.contains_key(to.as_str()) {
            return self.route_exchange(&to, payload, targets);
        }
        Err(not_found(&to))
    }

    pub(super) fn on_ack(&mut self, token: u64, rejected: Option<ErrorCondition>) {
        let Some(p) = self.acks.get_mut(&token) else {
            return;
        };
        p.remaining = p.remaining.saturating_sub(1);
        if rejected.is_some() && p.rejected.is_none() {
            p.rejected = rejected;
        }
        if p.remaining == 0 {
            if let Some(p) = self.acks.remove(&token) {
                self.finish_publish(p);
            }
        }
    }

    /// Every queue has the publish: settle it (batched) and top up the link's credit.
    fn finish_publish(&mut self, p: PendingAck) {
        let window = self.settings.link_credit;
        let Some(c) = self.conns.get_mut(&p.conn) else {
            return;
        };
        if !p.presettled {
            match p.rejected {
                None => c.accepted.push((p.link.channel, p.delivery_id)),
                Some(e) => {
                    let state = DeliveryState::Rejected(Some(e));
                    c.engine.disposition(
                        p.link.channel,
                        Role::Receiver,
                        p.delivery_id,
                        p.delivery_id,
                        true,
                        Some(&state),
                    );
                }
            }
        }
        if let Some(LinkRole::Publisher { outstanding, .. }) = c.links.get_mut(&p.link) {
            *outstanding = outstanding.saturating_sub(1);
            let credit = c.engine.credit(p.link);
            if credit + *outstanding <= window / 2 {
                c.engine.grant_credit(p.link, window - *outstanding, false);
            }
        }
        self.mark_dirty(p.conn);
    }

    /// Sends the accepted dispositions gathered during this step, as ranges.
    pub(super) fn flush_acks(&mut self) {
        for id in self.dirty.clone() {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if c.accepted.is_empty() {
                continue;
            }
            let mut acc = std::mem::take(&mut c.accepted);
            accept_in_ranges(&mut c.engine, &mut acc);
            acc.clear();
            c.accepted = acc;
        }
    }

    // -----------------------------------------------------------------------
    // Consuming

    /// The client changed the credit of a link we send on: ask the queue for more.
    fn on_credit(&mut self, id: u64, link: LinkKey, drain: bool) {
        let me = self.id;
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        // Deliveries that waited for credit go first.
        if let Some(LinkRole::Consumer { buffer, .. }) = c.links.get_mut(&link) {
            let mut waiting = std::mem::take(buffer);
            while c.engine.credit(link) > 0 {
                let Some(d) = waiting.pop_front() else {
                    break;
                };
                if let Some(LinkRole::Consumer { queue, owner, .. }) = c.links.get(&link) {
                    let (queue, owner) = (queue.clone(), *owner);
                    send_delivery(c, link, &queue, owner, d);
                }
            }
            if let Some(LinkRole::Consumer { buffer, .. }) = c.links.get_mut(&link) {
                *buffer = waiting;
            }
        }
        let credit = c.engine.credit(link);
        let Some(LinkRole::Consumer {
            queue,
            owner,
            requested,
            buffer,
            draining,
            ..
        }) = c.links.get_mut(&link)
        else {
            return;
        };
        let have = *requested + buffer.len() as u32;
        let want = credit.saturating_sub(have);
        if want == 0 && !drain {
            return;
        }
        *requested += want;
        *draining |= drain;
        let msg = ShardMsg::Credit {
            queue: queue.clone(),
            consumer: consumer_ref(me, id, link),
            credit: want,
            drain,
        };
        let owner = *owner;
        self.mark_dirty(id);
        self.send(owner, msg);
    }

    pub(super) fn on_deliver(&mut self, queue: Arc<str>, d: Delivery) {
        let id = d.consumer.conn;
        let link = d.consumer.link;
        let Some(c) = self.conns.get_mut(&id) else {
            return self.give_back(queue, d);
        };
        let Some(LinkRole::Consumer {
            requested,
            buffer,
            owner,
            ..
        }) = c.links.get_mut(&link)
        else {
            return self.give_back(queue, d);
        };
        *requested = requested.saturating_sub(1);
        let owner = *owner;
        if c.engine.credit(link) == 0 {
            buffer.push_back(d);
            return;
        }
        send_delivery(c, link, &queue, owner, d);
        self.mark_dirty(id);
    }

    /// A delivery for a link that is gone goes back to its queue, not counted.
    fn give_back(&mut self, queue: Arc<str>, d: Delivery) {
        if d.settled {
            return;
        }
        let owner = self
            .catalogue
            .queues
            .get(&queue)
            .map(|q| q.owner)
            .unwrap_or(0);
        self.send(
            owner,
            ShardMsg::Settle {
                queue,
                consumer: d.consumer,
                position: d.position,
                how: Settlement::Released,
            },
        );
    }

    pub(super) fn on_drained(&mut self, consumer: ConsumerRef, unused: u32) {
        let Some(c) = self.conns.get_mut(&consumer.conn) else {
            return;
        };
        if let Some(LinkRole::Consumer {
            requested,
            buffer,
            draining,
            ..
        }) = c.links.get_mut(&consumer.link)
        {
            *requested = requested.saturating_sub(unused);
            if *draining && *requested == 0 && buffer.is_empty() {
                *draining = false;
                c.engine.drained(consumer.link);
                self.mark_dirty(consumer.conn);
            }
        }
    }

    pub(super) fn on_consumer_gone(&mut self, consumer: ConsumerRef, error: ErrorCondition) {
        let Some(c) = self.conns.get_mut(&consumer.conn) else {
            return;
        };
        if c.links.remove(&consumer.link).is_some() {
            c.out.retain(|_, o| o.link != consumer.link);
            c.engine.detach_with(consumer.link, error);
            self.mark_dirty(consumer.conn);
        }
    }

    /// The client settled (or changed the state of) deliveries we sent.
    fn on_disposition(&mut self, id: u64, channel: u16, d: Disposition) {
        if d.role != Role::Receiver {
            // The client as sender settling its own transfers: we settle on store.
            return;
        }
        let me = self.id;
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let how = match &d.state {
            None | Some(DeliveryState::Accepted) | Some(DeliveryState::Rejected(_)) => {
                Settlement::Consumed
            }
            Some(DeliveryState::Released) => Settlement::Released,
            Some(DeliveryState::Modified {
                delivery_failed, ..
            }) => {
                if *delivery_failed {
                    Settlement::Failed
                } else {
                    Settlement::Released
                }
            }
            Some(DeliveryState::Received { .. }) => return,
        };
        let last = d.last.unwrap_or(d.first);
        let span = u64::from(last.wrapping_sub(d.first)) + 1;
        let ids: Vec<u32> = if span as usize > c.out.len() {
            let mut v: Vec<u32> = c
                .out
                .keys()
                .filter(|(ch, id)| {
                    *ch == channel && id.wrapping_sub(d.first) <= last.wrapping_sub(d.first)
                })
                .map(|(_, id)| *id)
                .collect();
            v.sort_unstable();
            v
        } else {
            (0..span as u32).map(|i| d.first.wrapping_add(i)).collect()
        };
        let mut settles = Vec::new();
        for delivery_id in ids {
            if let Some(o) = c.out.remove(&(channel, delivery_id)) {
                settles.push((o.owner, o.queue, consumer_ref(me, id, o.link), o.position));
            }
        }
        if !d.settled {
            // We settle what the client decided, so it can forget the deliveries.
            c.engine
                .disposition(channel, Role::Sender, d.first, last, true, d.state.as_ref());
            self.mark_dirty(id);
        }
        for (owner, queue, consumer, position) in settles {
            self.send(
                owner,
                ShardMsg::Settle {
                    queue,
                    consumer,
                    position,
                    how,
                },
            );
        }
    }

    fn on_detached(&mut self, id: u64, link: LinkKey) {
        let me = self.id;
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(role) = c.links.remove(&link) else {
            return;
        };
        if let LinkRole::Consumer { queue, owner, .. } = role {
            let mut delivered: Vec<u64> = Vec::new();
            c.out.retain(|_, o| {
                if o.link == link {
                    delivered.push(o.position);
                    false
                } else {
                    true
                }
            });
            self.send(
                owner,
                ShardMsg::Unsubscribe {
                    queue,
                    consumer: consumer_ref(me, id, link),
                    delivered,
                },
            );
        }
    }
}

/// Settles deliveries we received as accepted, one disposition per run of
/// consecutive ids of a session (`ids` is sorted here; left as is).
pub(super) fn accept_in_ranges(engine: &mut Connection, ids: &mut [(u16, u32)]) {
    ids.sort_unstable();
    let mut i = 0;
    while i < ids.len() {
        let (channel, first) = ids[i];
        let mut last = first;
        while i + 1 < ids.len() && ids[i + 1].0 == channel && ids[i + 1].1 == last.wrapping_add(1) {
            i += 1;
            last = ids[i].1;
        }
        engine.disposition(
            channel,
            Role::Receiver,
            first,
            last,
            true,
            Some(&DeliveryState::Accepted),
        );
        i += 1;
    }
}

/// Puts one delivery on the wire, rewriting the header when it is a redelivery.
fn send_delivery(c: &mut Conn, link: LinkKey, queue: &Arc<str>, owner: usize, d: Delivery) {
    let payload = if d.delivery_count > 0 {
        match message::scan(&d.message) {
            Ok(map) => {
                let mut header = message::Header::read(&d.message, &map).unwrap_or_default();
                header.delivery_count = d.delivery_count;
                header.first_acquirer = false;
                message::with_header(&d.message, &map, &header)
            }
            Err(_) => d.message.clone(),
        }
    } else {
        d.message.clone()
    };
    let tag = delivery_tag(d.position);
    if let Some(delivery_id) = c.engine.send(link, &tag, &payload, d.settled) {
        c.messages_out += 1;
        if !d.settled {
            c.out.insert(
                (link.channel, delivery_id),
                OutDelivery {
                    link,
                    queue: queue.clone(),
                    owner,
                    position: d.position,
                },
            );
        }
    }
}

/// The `to` field of a message's properties.
fn to_address(payload: &Bytes) -> Option<String> {
    let map = message::scan(payload).ok()?;
    let (start, end) = map.properties?;
    match crate::amqp::codec::Decoder::new(payload.slice(start..end))
        .value()
        .ok()?
    {
        Value::Described(_, body) => match *body {
            Value::List(items) => items.get(2).and_then(|v| v.as_str()).map(str::to_owned),
            _ => None,
        },
        _ => None,
    }
}

/// The binding a subscription to an exchange asks for, from its source filter.
fn subscription_key(source: Option<&Source>) -> Result<BindingKey, ErrorCondition> {
    let Some(Value::Map(filters)) = source.and_then(|s| s.filter.as_ref()) else {
        return Ok(BindingKey::All);
    };
    for (_, f) in filters {
        let Value::Described(descriptor, value) = f else {
            continue;
        };
        let is = |(sym, code): (&str, u64)| {
            descriptor.as_str() == Some(sym) || descriptor.as_u64() == Some(code)
        };
        if is(DIRECT_FILTER) || is(TOPIC_FILTER) {
            let key = value.as_str().ok_or_else(|| {
                ErrorCondition::new(
                    condition::INVALID_FIELD,
                    "binding filter value must be a string",
                )
            })?;
            return Ok(BindingKey::Key(key.to_owned()));
        }
        if is(HEADERS_FILTER) {
            return headers_key(value).ok_or_else(|| {
                ErrorCondition::new(
                    condition::INVALID_FIELD,
                    "headers filter value must be a map",
                )
            });
        }
    }
    Ok(BindingKey::All)
}

/// Queue settings from an attach's node properties (create-on-demand).
fn node_settings(
    defaults: &QueueSettings,
    attach: &Attach,
    client_sends: bool,
) -> Result<QueueSettings, ErrorCondition> {
    let (props, durable) = if client_sends {
        let t = attach.target.as_ref();
        (
            t.and_then(|t| t.dynamic_node_properties.as_ref()),
            t.map(|t| t.durable),
        )
    } else {
        let s = attach.source.as_ref();
        (
            s.and_then(|s| s.dynamic_node_properties.as_ref()),
            s.map(|s| s.durable),
        )
    };
    let mut settings = defaults.clone();
    if durable.unwrap_or(0) > 0 {
        settings.durable = true;
    }
    if let Some(props) = props {
        if let Some(n) = props.map_get("max-queue-size").and_then(Value::as_u64) {
            settings.max_size = n;
        }
        if let Some(n) = props.map_get("max-queue-count").and_then(Value::as_u64) {
            settings.max_count = n;
        }
        if let Some(p) = props
            .map_get("limit-policy")
            .and_then(Value::as_str)
            .and_then(crate::queue::LimitPolicy::parse)
        {
            settings.policy = p;
        }
        if let Some(Value::Bool(d)) = props.map_get("durable") {
            settings.durable = *d;
        }
        if let Some(r) = props.map_get("qpid.replicate").and_then(Value::as_str) {
            if !matches!(r, "none" | "configuration" | "all") {
                return Err(ErrorCondition::new(
                    condition::INVALID_FIELD,
                    format!("qpid.replicate: '{r}' is not one of none, configuration, all"),
                ));
            }
            settings.replicate = Some(r.to_owned());
        }
    }
    Ok(settings)
}
