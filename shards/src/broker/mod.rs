//! One shard's broker state and logic, without I/O: the connections it serves,
//! the queues it owns, its replica of the configuration, and the messages it
//! exchanges with other shards. The glommio layer (`runtime`) feeds it socket
//! bytes and ring messages and carries out what it leaves in its outboxes.
//!
//! - `mod.rs` (this file): shard state, cross-shard messages, queue-owner side.
//! - `accept.rs`: how connections begin (server engines, a backup's replication engine).
//! - `policy.rs`: where the access policy is asked.
//! - `catalogue.rs`: the configuration replica and its single ordering point.
//! - `link.rs`: the connection side: socket events, what each attach means.
//! - `publish.rs`: routing a client's messages and settling them once stored.
//! - `consume.rs`: credit, deliveries and settlement for consumers and browsers.

mod accept;
mod catalogue;
mod consume;
pub mod hooks;
mod link;
mod mgmt;
mod policy;
mod publish;
mod replica;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::amqp::connection::{Connection, LinkKey};
use crate::amqp::performative::{condition, ErrorCondition};
use crate::queue::{
    AckTo, ConsumerRef, Delivery, EnqueueOutcome, Queue, QueueSettings, Settlement,
};

pub use catalogue::{Catalogue, ConfigEvent, ConfigOp};
use link::{Conn, PendingAck};
pub use mgmt::{ConnectionInfo, ExchangeStats, ReplyTo, ShardReport};
pub use replica::{EnqueueMeta, ReplicaSink};

/// Settings every shard needs (the daemon maps its configuration onto this).
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub shards: usize,
    /// SASL: require authentication (PLAIN against `users`); otherwise ANONYMOUS too.
    pub auth: bool,
    pub users: HashMap<String, String>,
    pub max_connections: usize,
    pub max_frame_size: u32,
    pub idle_timeout: Option<Duration>,
    /// Credit granted to each publishing link.
    pub link_credit: u32,
    pub default_queue: QueueSettings,
    pub auto_create_queues: bool,
    pub container_id: String,
    /// Largest message reassembled from frames.
    pub max_message_size: usize,
    /// Who may connect when the broker starts (HA brokers start admin-only).
    pub initial_admission: hooks::Admission,
    /// Extra open-frame properties (e.g. `failover-server-list`).
    pub open_properties: Vec<(String, crate::amqp::codec::Value)>,
    /// In a cluster, `ha-replicate` (none, configuration, all); `None` outside one.
    pub ha_replicate: Option<String>,
    /// In a cluster: how backups connect to the primary.
    pub ha_link: Option<HaLinkSettings>,
    /// Who may connect, attach, manage and publish ([`crate::access`]).
    pub access: Arc<dyn crate::access::AccessPolicy>,
}

/// How a backup's replication link connects and keeps alive.
#[derive(Debug, Clone)]
pub struct HaLinkSettings {
    pub username: Option<String>,
    pub password: Option<String>,
    /// `link-heartbeat-interval`.
    pub heartbeat: Duration,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            shards: 1,
            auth: false,
            users: HashMap::new(),
            max_connections: 500,
            max_frame_size: 65536,
            idle_timeout: None,
            link_credit: 500,
            default_queue: QueueSettings {
                max_size: 100 * 1024 * 1024,
                ..Default::default()
            },
            auto_create_queues: true,
            container_id: "tandem".into(),
            max_message_size: 100 * 1024 * 1024,
            initial_admission: hooks::Admission::Open,
            open_properties: Vec::new(),
            ha_replicate: None,
            ha_link: None,
            access: Arc::new(crate::access::AllowAll),
        }
    }
}

/// What shards tell each other. Each ordered pair of shards has one FIFO ring.
#[derive(Debug)]
pub enum ShardMsg {
    /// To shard 0, the configuration's ordering point.
    ConfigRequest {
        origin: usize,
        req: u64,
        op: ConfigOp,
    },
    /// From shard 0: apply these and confirm with `ConfigApplied{barrier}`.
    Config {
        events: Vec<ConfigEvent>,
        barrier: u64,
    },
    ConfigApplied {
        barrier: u64,
    },
    /// From shard 0 once every shard applied the change.
    ConfigReply {
        req: u64,
        result: Result<ConfigDone, ErrorCondition>,
    },
    /// Publisher shard → queue owner.
    Enqueue {
        queue: Arc<str>,
        message: Bytes,
        ack: Option<AckTo>,
    },
    /// Queue owner → publisher shard: stored (or refused).
    Ack {
        token: u64,
        rejected: Option<ErrorCondition>,
    },
    /// Consumer shard → queue owner.
    Subscribe {
        queue: Arc<str>,
        consumer: ConsumerRef,
        browse: bool,
        settled: bool,
    },
    Credit {
        queue: Arc<str>,
        consumer: ConsumerRef,
        credit: u32,
        drain: bool,
    },
    Settle {
        queue: Arc<str>,
        consumer: ConsumerRef,
        position: u64,
        how: Settlement,
    },
    Unsubscribe {
        queue: Arc<str>,
        consumer: ConsumerRef,
        delivered: Vec<u64>,
    },
    /// Queue owner → consumer shard.
    Deliver {
        queue: Arc<str>,
        delivery: Delivery,
    },
    Drained {
        consumer: ConsumerRef,
        unused: u32,
    },
    /// The queue a consumer reads from was deleted.
    ConsumerGone {
        consumer: ConsumerRef,
        error: ErrorCondition,
    },
    /// From shard 0: who may connect from now on.
    Admission(hooks::Admission),
    /// To shard 0: a management request for the `ha-broker` entity.
    HaRequest {
        request: crate::management::Request,
        reply: mgmt::ReplyTo,
    },
    // -- replication, primary side
    /// Shard 0 -> owner: start streaming a queue to a backup.
    StartReplica {
        queue: Arc<str>,
        sink: ReplicaSink,
    },
    /// Owner -> shard 0: the backup caught up on this queue.
    QueueCaughtUp {
        member: hooks::MemberId,
        queue: Arc<str>,
    },
    /// Owner or shard 0 -> link host: an event for the backup's stream.
    ReplicaOut {
        sink: ReplicaSink,
        event: crate::replica::Encoded,
        meta: EnqueueMeta,
    },
    /// Link host -> owner: the backup has the queue up to this position.
    ReplicaAck {
        queue: Arc<str>,
        member: hooks::MemberId,
        position: u64,
    },
    /// Shard 0 -> all: settlements wait for this backup from now on.
    GuardMember {
        member: hooks::MemberId,
    },
    /// Shard 0 -> all: the backup is gone.
    DropMember {
        member: hooks::MemberId,
    },
    /// Link host -> shard 0: a backup attached its link.
    BackupAttached {
        sink: ReplicaSink,
        who: hooks::BackupIdentity,
    },
    /// Shard 0 -> link host: the HA role refused the backup.
    ReplicaRefused {
        sink: ReplicaSink,
        reason: String,
        status: Option<String>,
    },
    /// Shard 0 -> link host: the HA role accepted the backup (our epoch).
    ReplicaAccepted {
        sink: ReplicaSink,
        epoch: u64,
    },
    /// Shard 0 -> link host: close a silent backup's link.
    CloseReplicaLink {
        sink: ReplicaSink,
    },
    /// Link host -> shard 0.
    BackupHeard {
        member: hooks::MemberId,
    },
    BackupGone {
        member: hooks::MemberId,
    },
    // -- replication, backup side
    /// Shard 0 -> owner: store a replicated message at the primary's position.
    ReplicaEnqueue {
        queue: Arc<str>,
        position: u64,
        message: Bytes,
        origin: usize,
        token: u64,
    },
    /// Owner -> shard 0: stored, or not (the queue is missing).
    ReplicaApplied {
        token: u64,
        stored: bool,
    },
    ReplicaDequeue {
        queue: Arc<str>,
        positions: Vec<u64>,
    },
    /// Drop the messages of a queue about to be re-sent whole.
    ReplicaPurge {
        queue: Arc<str>,
    },
    /// Management: a shard's counters, summed by the asking shard.
    StatsRequest {
        origin: usize,
        req: u64,
    },
    StatsReply {
        req: u64,
        report: ShardReport,
    },
}

/// What a successful configuration request produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigDone {
    /// The queue concerned (a generated name for temporary queues), and its owner.
    pub queue: Option<(Arc<str>, usize)>,
}

/// One shard's broker.
pub struct Shard {
    pub id: usize,
    pub settings: Arc<BrokerSettings>,
    pub catalogue: Catalogue,
    queues: HashMap<Arc<str>, Queue>,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    /// Messages waiting to go to each shard (index `id` is processed locally).
    outbox: Vec<VecDeque<ShardMsg>>,
    /// Connections with output to write.
    dirty: Vec<u64>,
    /// Publishes waiting for their queues' acks, by token.
    acks: HashMap<u64, PendingAck>,
    next_token: u64,
    /// Requests to shard 0 awaiting their reply, by request id.
    requests: HashMap<u64, link::Waiting>,
    next_req: u64,
    /// Shard 0 only: changes waiting for every shard's confirmation.
    barriers: HashMap<u64, catalogue::Barrier>,
    next_barrier: u64,
    /// Temporary-name counter.
    next_temp: u64,
    started: Instant,
    /// The time of the input being handled: the runtime sets it before each
    /// batch (`set_now`), simulations pass a virtual clock. Broker logic reads
    /// no other clock.
    now: Instant,
    /// Routing scratch space, reused per message.
    route_buf: Vec<Arc<str>>,
    deliveries_buf: Vec<Delivery>,
    admitted_buf: Vec<(Option<AckTo>, u64, Bytes)>,
    /// Statistics gathers in progress (management), by request id.
    gathers: HashMap<u64, mgmt::Gather>,
    /// Routing counters of exchanges used on this shard.
    exchange_stats: HashMap<Arc<str>, ExchangeStats>,
    /// Who may connect (set by shard 0's HA handler, broadcast to all).
    admission: hooks::Admission,
    /// Shard 0 only, in a cluster: the broker's HA role.
    ha: Option<Box<dyn hooks::HaHandler>>,
    /// Publishers' settlements held until backups have their messages.
    guard: crate::replica::guard::SettlementGuard<AckTo>,
    replica: replica::ReplicaState,
    /// Backup shard 0: replication connections the runtime should open.
    replica_connects: Vec<(usize, String)>,
    /// Most message bytes this shard's queues held since memory was last
    /// handed back to the system.
    queued_high: u64,
}

/// Freed message memory is handed back to the system once a shard's queues
/// shrink by this much from their high-water mark.
const RELEASE_AFTER: u64 = 64 * 1024 * 1024;

impl Shard {
    pub fn new(id: usize, settings: Arc<BrokerSettings>, now: Instant) -> Shard {
        let shards = settings.shards;
        let initial_admission = settings.initial_admission.clone();
        Shard {
            id,
            settings,
            catalogue: Catalogue::new(),
            queues: HashMap::new(),
            conns: HashMap::new(),
            next_conn: 1,
            outbox: (0..shards).map(|_| VecDeque::new()).collect(),
            dirty: Vec::new(),
            acks: HashMap::new(),
            next_token: 1,
            requests: HashMap::new(),
            next_req: 1,
            barriers: HashMap::new(),
            next_barrier: 1,
            next_temp: 1,
            started: now,
            now,
            route_buf: Vec::new(),
            deliveries_buf: Vec::new(),
            admitted_buf: Vec::new(),
            gathers: HashMap::new(),
            exchange_stats: HashMap::new(),
            admission: initial_admission,
            ha: None,
            guard: crate::replica::guard::SettlementGuard::new(),
            replica: replica::ReplicaState::default(),
            replica_connects: Vec::new(),
            queued_high: 0,
        }
    }

    /// Called now and then: when the queues have shrunk a lot, asks the
    /// allocator to return the freed pages (glibc keeps them otherwise, and a
    /// broker that held a million messages would stay that size for good).
    pub fn release_memory(&mut self) {
        let queued: u64 = self.queues.values().map(Queue::bytes).sum();
        self.queued_high = self.queued_high.max(queued);
        if self.queued_high - queued >= RELEASE_AFTER {
            self.queued_high = queued;
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim only walks the allocator's own free lists.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }

    pub fn shards(&self) -> usize {
        self.settings.shards
    }

    pub fn uptime(&self) -> Duration {
        self.now.saturating_duration_since(self.started)
    }

    /// A snapshot of this shard's counters for [`crate::stats::StatsHandle`].
    pub fn snapshot(&self) -> crate::stats::ShardSnapshot {
        crate::stats::ShardSnapshot {
            shard: self.id,
            taken: self.now,
            uptime: self.uptime(),
            report: self.report(),
        }
    }

    /// Sets the time of the inputs that follow (ring messages, replies).
    pub fn set_now(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Queues a message for shard `to` (processed in place when `to` is us).
    fn send(&mut self, to: usize, msg: ShardMsg) {
        self.outbox[to].push_back(msg);
    }

    fn mark_dirty(&mut self, conn: u64) {
        if !self.dirty.contains(&conn) {
            self.dirty.push(conn);
        }
    }

    /// Processes local messages until none are left. Call after every input.
    pub fn run_local(&mut self) {
        while let Some(msg) = self.outbox[self.id].pop_front() {
            self.on_shard_msg(msg);
        }
        self.flush_acks();
        self.flush_replica_links();
        self.flush_replica_settles();
    }

    /// The outbox for another shard (the runtime moves it onto the ring).
    pub fn outbox_for(&mut self, shard: usize) -> &mut VecDeque<ShardMsg> {
        &mut self.outbox[shard]
    }

    /// Connections that have output to write since the last call.
    pub fn take_dirty(&mut self, into: &mut Vec<u64>) {
        into.append(&mut self.dirty);
    }

    /// Handles one message from a shard (ourselves included).
    pub fn on_shard_msg(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::ConfigRequest { origin, req, op } => self.on_config_request(origin, req, op),
            ShardMsg::Config { events, barrier } => {
                for ev in &events {
                    self.apply_config(ev);
                }
                self.send(0, ShardMsg::ConfigApplied { barrier });
            }
            ShardMsg::ConfigApplied { barrier } => self.on_config_applied(barrier),
            ShardMsg::ConfigReply { req, result } => self.on_config_reply(req, result),
            ShardMsg::Enqueue {
                queue,
                message,
                ack,
            } => self.on_enqueue(&queue, message, ack),
            ShardMsg::Ack { token, rejected } => self.on_ack(token, rejected),
            ShardMsg::Subscribe {
                queue,
                consumer,
                browse,
                settled,
            } => match self.queues.get_mut(&queue) {
                Some(q) => q.subscribe(consumer, browse, settled),
                None => self.send(
                    consumer.shard,
                    ShardMsg::ConsumerGone {
                        consumer,
                        error: ErrorCondition::new(
                            condition::NOT_FOUND,
                            format!("queue '{queue}' no longer exists"),
                        ),
                    },
                ),
            },
            ShardMsg::Credit {
                queue,
                consumer,
                credit,
                drain,
            } => {
                let mut out = std::mem::take(&mut self.deliveries_buf);
                let left = match self.queues.get_mut(&queue) {
                    Some(q) => q.add_credit(consumer, credit, drain, &mut out),
                    None => drain.then_some(credit),
                };
                self.send_deliveries(&queue, &mut out);
                self.deliveries_buf = out;
                if let Some(unused) = left {
                    self.send(consumer.shard, ShardMsg::Drained { consumer, unused });
                }
            }
            ShardMsg::Settle {
                queue,
                consumer,
                position,
                how,
            } => {
                if let Some(q) = self.queues.get_mut(&queue) {
                    q.settle(consumer, position, how);
                }
                self.after_dequeue(&queue);
            }
            ShardMsg::Unsubscribe {
                queue,
                consumer,
                delivered,
            } => {
                let delete = match self.queues.get_mut(&queue) {
                    Some(q) => q.unsubscribe(consumer, &delivered),
                    None => false,
                };
                if delete {
                    let req = self.next_req;
                    self.next_req += 1;
                    self.send(
                        0,
                        ShardMsg::ConfigRequest {
                            origin: self.id,
                            req,
                            op: ConfigOp::DeleteQueue {
                                name: queue.to_string(),
                                if_unused: true,
                            },
                        },
                    );
                } else {
                    self.after_dequeue(&queue);
                }
            }
            ShardMsg::Deliver { queue, delivery } => self.on_deliver(queue, delivery),
            ShardMsg::Drained { consumer, unused } => self.on_drained(consumer, unused),
            ShardMsg::ConsumerGone { consumer, error } => self.on_consumer_gone(consumer, error),
            ShardMsg::Admission(a) => self.apply_admission(a),
            ShardMsg::HaRequest { request, reply } => self.on_ha_request(request, reply),
            ShardMsg::StartReplica { queue, sink } => self.on_start_replica(queue, sink),
            ShardMsg::QueueCaughtUp { member, queue } => self.on_queue_caught_up(member, queue),
            ShardMsg::ReplicaOut { sink, event, meta } => self.on_replica_out(sink, event, meta),
            ShardMsg::ReplicaAck {
                queue,
                member,
                position,
            } => self.on_replica_ack(queue, member, position),
            ShardMsg::GuardMember { member } => self.on_guard_member(member),
            ShardMsg::DropMember { member } => self.on_drop_member(member),
            ShardMsg::BackupAttached { sink, who } => self.on_backup_attached(sink, who),
            ShardMsg::ReplicaRefused {
                sink,
                reason,
                status,
            } => self.on_replica_refused(sink, reason, status),
            ShardMsg::ReplicaAccepted { sink, epoch } => self.on_replica_accepted(sink, epoch),
            ShardMsg::CloseReplicaLink { sink } => {
                self.conn_close(sink.conn, replica::dropped_by_primary())
            }
            ShardMsg::BackupHeard { member } => {
                self.ha_link_event(hooks::LinkEvent::BackupHeard { member })
            }
            ShardMsg::BackupGone { member } => {
                self.ha_link_event(hooks::LinkEvent::BackupLost { member })
            }
            ShardMsg::ReplicaEnqueue {
                queue,
                position,
                message,
                origin,
                token,
            } => {
                let stored = match self.queues.get_mut(&queue) {
                    Some(q) => {
                        q.insert_at(position, message);
                        true
                    }
                    None => false,
                };
                self.send(origin, ShardMsg::ReplicaApplied { token, stored });
            }
            ShardMsg::ReplicaApplied { token, stored } => self.on_replica_applied(token, stored),
            ShardMsg::ReplicaDequeue { queue, positions } => {
                if let Some(q) = self.queues.get_mut(&queue) {
                    for p in positions {
                        q.remove_at(p);
                    }
                }
            }
            ShardMsg::ReplicaPurge { queue } => {
                if let Some(q) = self.queues.get_mut(&queue) {
                    q.purge();
                }
            }
            ShardMsg::StatsRequest { origin, req } => {
                let report = self.report();
                self.send(origin, ShardMsg::StatsReply { req, report });
            }
            ShardMsg::StatsReply { req, report } => self.on_stats_reply(req, report),
        }
    }

    // -----------------------------------------------------------------------
    // Queue-owner side

    fn on_enqueue(&mut self, queue: &Arc<str>, message: Bytes, ack: Option<AckTo>) {
        let Some(q) = self.queues.get_mut(queue) else {
            if let Some(ack) = ack {
                let error = ErrorCondition::new(
                    condition::NOT_FOUND,
                    format!("queue '{queue}' no longer exists"),
                );
                self.send(
                    ack.shard,
                    ShardMsg::Ack {
                        token: ack.token,
                        rejected: Some(error),
                    },
                );
            }
            return;
        };
        match q.enqueue(message.clone(), ack) {
            EnqueueOutcome::Stored(position) => self.stored(queue, position, message, ack),
            EnqueueOutcome::Held => {}
            EnqueueOutcome::Rejected => {
                if let Some(ack) = ack {
                    let error = ErrorCondition::new(
                        condition::RESOURCE_LIMIT_EXCEEDED,
                        format!("queue '{queue}' is full (limit policy reject)"),
                    );
                    self.send(
                        ack.shard,
                        ShardMsg::Ack {
                            token: ack.token,
                            rejected: Some(error),
                        },
                    );
                }
            }
        }
        // A ring or last-value queue may have dropped something to make room.
        self.replicate_dequeues(queue);
        let mut out = std::mem::take(&mut self.deliveries_buf);
        if let Some(q) = self.queues.get_mut(queue) {
            q.dispatch(&mut out);
        }
        self.send_deliveries(queue, &mut out);
        self.deliveries_buf = out;
        self.replicate_dequeues(queue);
    }

    /// A message is stored at `position`: replicate it, and settle its publisher
    /// now or, when backups guard the queue, once they have it.
    fn stored(&mut self, queue: &Arc<str>, position: u64, message: Bytes, ack: Option<AckTo>) {
        self.replicate_enqueue(queue, position, message);
        let Some(ack) = ack else { return };
        if let Some(ack) = self.guard.enqueued(queue, position, ack) {
            self.send(
                ack.shard,
                ShardMsg::Ack {
                    token: ack.token,
                    rejected: None,
                },
            );
        }
    }

    /// After messages left a queue: replicate that, admit held publishes, dispatch.
    fn after_dequeue(&mut self, queue: &Arc<str>) {
        self.replicate_dequeues(queue);
        let mut admitted = std::mem::take(&mut self.admitted_buf);
        let mut out = std::mem::take(&mut self.deliveries_buf);
        if let Some(q) = self.queues.get_mut(queue) {
            q.admit_held(&mut admitted);
        }
        for (ack, position, message) in admitted.drain(..) {
            self.stored(queue, position, message, ack);
        }
        if let Some(q) = self.queues.get_mut(queue) {
            q.dispatch(&mut out);
        }
        self.send_deliveries(queue, &mut out);
        self.replicate_dequeues(queue);
        self.admitted_buf = admitted;
        self.deliveries_buf = out;
    }

    fn send_deliveries(&mut self, queue: &Arc<str>, out: &mut Vec<Delivery>) {
        for delivery in out.drain(..) {
            let to = delivery.consumer.shard;
            self.send(
                to,
                ShardMsg::Deliver {
                    queue: queue.clone(),
                    delivery,
                },
            );
        }
    }

    /// Creates or drops owned queues as configuration events say.
    fn apply_config(&mut self, ev: &ConfigEvent) {
        self.catalogue.apply(ev);
        match ev {
            ConfigEvent::QueueDeclared {
                name,
                owner,
                settings,
            } if *owner == self.id => match self.queues.get_mut(name) {
                // Re-declared with other settings (a backup catching up).
                Some(q) => q.settings = settings.clone(),
                None => {
                    self.queues
                        .insert(name.clone(), Queue::new(name.clone(), settings.clone()));
                    self.guard_new_queue(name);
                }
            },
            ConfigEvent::QueueDeleted { name } => {
                self.forget_replica_queue(name);
                if let Some(mut q) = self.queues.remove(name) {
                    let error = ErrorCondition::new(
                        "amqp:resource-deleted",
                        format!("queue '{name}' was deleted"),
                    );
                    for consumer in q.consumer_refs() {
                        self.send(
                            consumer.shard,
                            ShardMsg::ConsumerGone {
                                consumer,
                                error: error.clone(),
                            },
                        );
                    }
                    for ack in q.drain_held() {
                        self.send(
                            ack.shard,
                            ShardMsg::Ack {
                                token: ack.token,
                                rejected: Some(error.clone()),
                            },
                        );
                    }
                }
            }
            _ => {}
        }
    }

    /// The shard owning `queue` (as this shard's catalogue knows it; shard 0 for
    /// a queue it does not know, whose owner then answers "no longer exists").
    fn owner_of(&self, queue: &str) -> usize {
        self.catalogue
            .queues
            .get(queue)
            .map(|q| q.owner)
            .unwrap_or(0)
    }

    /// Shard 0: installs the broker's HA role.
    pub fn set_ha(&mut self, handler: Box<dyn hooks::HaHandler>) {
        self.ha = Some(handler);
    }

    /// Shard 0: lets the HA role run its timers and applies what it decides.
    pub fn poll_ha(&mut self, now: Instant) {
        self.set_now(now);
        let Some(ha) = self.ha.as_mut() else {
            return;
        };
        let outcome = ha.poll(now);
        self.run_ha_commands(outcome.commands);
        if outcome.admission != self.admission {
            for shard in 0..self.shards() {
                if shard != self.id {
                    self.send(shard, ShardMsg::Admission(outcome.admission.clone()));
                }
            }
            self.apply_admission(outcome.admission);
        }
    }

    /// Applies an admission policy: under admin-only, ordinary clients already
    /// connected are closed too (a primary that steps down must drop them).
    fn apply_admission(&mut self, admission: hooks::Admission) {
        if let hooks::Admission::AdminOnly { reason } = &admission {
            // Dropped without a close frame, like a backup's refusal: Proton only
            // moves on promptly after a dropped connection.
            let error = ErrorCondition::new(condition::CONNECTION_FORCED, reason.clone());
            let ids: Vec<u64> = self
                .conns
                .iter()
                .filter(|(_, c)| c.opened && !c.admin)
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.engine.abort(error.clone());
                }
                self.conn_events(id);
            }
        }
        self.admission = admission;
    }

    /// Whether this broker only admits admin connections (it is a backup).
    pub fn admin_only(&self) -> bool {
        matches!(self.admission, hooks::Admission::AdminOnly { .. })
    }

    /// A new connection; returns its id.
    pub fn add_connection(&mut self, engine: Connection, peer: String) -> u64 {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(id, Conn::new(engine, peer));
        self.mark_dirty(id);
        id
    }
}

/// Tags we put on deliveries: the queue position, big-endian.
fn delivery_tag(position: u64) -> [u8; 8] {
    position.to_be_bytes()
}

/// A link's identity for the queue side.
fn consumer_ref(shard: usize, conn: u64, link: LinkKey) -> ConsumerRef {
    ConsumerRef { shard, conn, link }
}
