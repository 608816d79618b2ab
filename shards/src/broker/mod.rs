//! One shard's broker state and logic, without I/O: the connections it serves,
//! the queues it owns, its replica of the configuration, and the messages it
//! exchanges with other shards. The glommio layer (`runtime`) feeds it socket
//! bytes and ring messages and carries out what it leaves in its outboxes.
//!
//! - `mod.rs` (this file): shard state, cross-shard messages, queue-owner side.
//! - `accept.rs`: how an accepted connection's engine begins.
//! - `admission.rs`: who may connect (everyone, or admin connections only).
//! - `ext.rs`: the extension seam (change tap, settlement holders, claimed
//!   links, owned connections, extension messages).
//! - `handover.rs`: moving a connection to another shard.
//! - `policy.rs`: where the access policy is asked.
//! - `config.rs`: configuration changes as data (requests and applied events).
//! - `catalogue.rs`: the configuration replica and its single ordering point.
//! - `conn.rs`: what is kept per connection and link.
//! - `link.rs`: the connection side: socket events, what each attach means.
//! - `publish.rs`: routing a client's messages and settling them once stored.
//! - `consume.rs`: credit, deliveries and settlement for consumers and browsers.

mod accept;
pub mod admission;
mod catalogue;
mod config;
mod conn;
mod consume;
pub mod ext;
pub mod handover;
mod link;
mod mgmt;
mod policy;
mod publish;

use std::collections::VecDeque;

use hashbrown::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::amqp::connection::{Connection, LinkKey};
use crate::amqp::performative::{condition, ErrorCondition};
use crate::queue::{
    AckTo, ConsumerRef, Delivery, EnqueueOutcome, Queue, QueueSettings, Settlement,
};

pub use crate::stats::{ConnectionInfo, ConnectionTotals, ExchangeStats, ShardReport};
pub use catalogue::{Catalogue, QueueEntry};
pub use config::{ConfigEvent, ConfigOp};
pub use conn::ReplyTo;
use conn::{Conn, PendingAck, Waiting};
pub use publish::accept_in_ranges;

/// Settings every shard needs (the daemon maps its configuration onto this).
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub shards: usize,
    /// SASL: require authentication (PLAIN against `users`); otherwise ANONYMOUS too.
    pub auth: bool,
    pub users: Arc<crate::users::UserDb>,
    pub max_connections: usize,
    pub max_frame_size: u32,
    pub idle_timeout: Option<Duration>,
    /// Credit granted to each publishing link.
    pub link_credit: u32,
    pub default_queue: QueueSettings,
    pub auto_create_queues: bool,
    /// `stall-threshold`: a poll of a shard's task using more CPU than this is
    /// logged and counted ([`crate::stall`]); `None`: not measured.
    pub stall_threshold: Option<Duration>,
    /// `connection-placement`: a connection whose first link uses a queue
    /// another shard owns moves to that shard (`broker/handover.rs`).
    pub connection_placement: bool,
    /// `ha-replica-consumers`: local consumers may take messages from a
    /// queue replica (qpidd's behaviour); sends to one are always refused.
    pub replica_consumers: bool,
    pub container_id: String,
    /// Largest message reassembled from frames.
    pub max_message_size: usize,
    /// Who may connect when the broker starts (HA brokers start admin-only).
    pub initial_admission: admission::Admission,
    /// Extra open-frame properties (e.g. `failover-server-list`).
    pub open_properties: Vec<(String, crate::amqp::codec::Value)>,
    /// Who may connect, attach, manage and publish ([`crate::access`]).
    pub access: Arc<dyn crate::access::AccessPolicy>,
    /// One more shard after the `shards` workers, with no listener and no
    /// queues, for an extension's connections (its home); its thread's name.
    pub service_shard: Option<String>,
    /// The CPU the service shard runs on (default: the last one).
    pub service_cpu: Option<usize>,
    /// Configuration every shard starts with (what a store recovered), applied
    /// in order before any input.
    pub initial_config: Vec<ConfigOp>,
    /// Users who may act as the cluster (open with `qpid.ha-admin` or
    /// `qpid.ha-backup`, replicate, promote); `None`: any connection that
    /// says so (no authentication). A name matches with or without its
    /// `@realm` suffix.
    pub cluster_users: Option<Vec<String>>,
    /// A connection that has not opened (protocol header, SASL, open) within
    /// this long is closed.
    pub handshake_timeout: Duration,
    /// Connections still in their handshake, at most, broker-wide; a new one
    /// beyond it evicts the oldest.
    pub max_handshaking: usize,
    /// A TLS port, and how its connections are set up.
    pub tls: Option<TlsSettings>,
    /// Only encrypted connections may open (qpidd's `require-encryption`).
    pub require_encryption: bool,
    /// The realm of identities from client certificates (`CN@realm`).
    pub realm: String,
    /// What the management operations `reloadACLFile` and `RELOAD` read
    /// again (SIGHUP does the same from outside).
    pub reload: Arc<crate::reload::Reloadable>,
}

/// The TLS port (`ssl-port`) and its configuration.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub port: u16,
    pub server: Arc<rustls::ServerConfig>,
    /// For the connections an extension opens to `ssl:` addresses (a
    /// backup's replication link): the CA to verify the peer against, and
    /// this broker's certificate as the client's.
    pub client: Option<Arc<rustls::ClientConfig>>,
}

impl BrokerSettings {
    /// The workers and the service shard, if any.
    pub fn total_shards(&self) -> usize {
        self.shards + usize::from(self.service_shard.is_some())
    }
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            shards: 1,
            auth: false,
            users: Arc::default(),
            max_connections: 500,
            max_frame_size: 65536,
            idle_timeout: None,
            link_credit: 500,
            default_queue: QueueSettings {
                max_size: 100 * 1024 * 1024,
                ..Default::default()
            },
            auto_create_queues: true,
            connection_placement: true,
            stall_threshold: None,
            replica_consumers: false,
            container_id: "tandem".into(),
            max_message_size: 100 * 1024 * 1024,
            initial_admission: admission::Admission::Open,
            open_properties: Vec::new(),
            access: Arc::new(crate::access::AllowAll),
            service_shard: None,
            service_cpu: None,
            initial_config: Vec::new(),
            cluster_users: None,
            handshake_timeout: Duration::from_secs(10),
            max_handshaking: 100,
            tls: None,
            require_encryption: false,
            realm: "QPID".into(),
            reload: Arc::default(),
        }
    }
}

impl BrokerSettings {
    /// Whether `user` (as it logged in) may act as the cluster.
    pub fn acts_as_cluster(&self, user: Option<&str>) -> bool {
        if let Some(decided) = self.access.acts_as_cluster(user) {
            return decided;
        }
        let Some(allowed) = &self.cluster_users else {
            return true;
        };
        let bare = |name: &str| name.split_once('@').map_or(name, |(n, _)| n).to_owned();
        user.is_some_and(|u| allowed.iter().any(|a| bare(a) == bare(u)))
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
    Admission(admission::Admission),
    /// To shard 0: a management request for an entity type the extension
    /// manages.
    ExtRequest {
        request: crate::management::Request,
        reply: ReplyTo,
    },
    /// Between two shards' extensions.
    Ext(ext::ExtMsg),
    /// A connection handed over by another shard, with its socket.
    Arrival(Box<handover::Arrival>),
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

/// A publish whose settlement its queue's holders hold, since it was stored.
struct Held {
    ack: AckTo,
    since: Instant,
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
    requests: HashMap<u64, Waiting>,
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
    /// Deliveries one dispatch hands out at most (`set_dispatch_batch`).
    dispatch_batch: usize,
    /// Queues with more to dispatch than the last batch took.
    dispatch_later: Vec<Arc<str>>,
    admitted_buf: Vec<(Option<AckTo>, u64, Bytes)>,
    /// Statistics gathers in progress (management), by request id.
    gathers: HashMap<u64, mgmt::Gather>,
    /// Routing counters of exchanges used on this shard.
    exchange_stats: HashMap<Arc<str>, ExchangeStats>,
    /// Who may connect (set by shard 0's extension, broadcast to all).
    admission: admission::Admission,
    /// The extension (HA replication), taken out while it runs.
    ext: Option<Box<dyn ext::Extension>>,
    ext_installed: bool,
    /// Tap events raised and not yet delivered to the extension.
    taps: Vec<ext::Tap>,
    /// Calls to the extension made while it ran, in order.
    deferred: VecDeque<ext::Deferred>,
    /// Owned queues whose changes the tap reports.
    tapped: HashSet<Arc<str>>,
    /// The access policy asks about every message (asked once, not per message).
    checks_messages: bool,
    /// Publishers' settlements held by the extension's holders.
    holds: crate::holders::Holds<Held>,
    /// How long held settlements waited (stored to released).
    hold_times: crate::stats::Histogram,
    /// Connections the extension asked the runtime to open.
    connects: Vec<(u64, String, Duration)>,
    /// Disk operations the runtime should perform, with their tokens.
    disk_ops: Vec<(u64, crate::disk::DiskOp)>,
    next_disk: u64,
    /// Connections handed over to another shard, until the runtime sends them.
    leaving: Vec<(u64, usize, handover::Handover)>,
    /// Connections adopted from another shard, until the runtime serves them.
    arrivals: Vec<handover::Adopted>,
    /// What the runtime's stall detector has seen, as of its last report.
    stalls: crate::stall::StallFigures,
    /// What the connections that closed here had moved.
    closed_totals: ConnectionTotals,
    /// Most message bytes this shard's queues held since memory was last
    /// handed back to the system.
    queued_high: u64,
    /// Most connections this shard held since memory was last handed back.
    conns_high: usize,
    /// No queue of this shard gives a message a position below this: raised
    /// past a deleted queue's positions (so a queue declared again under its
    /// name never reuses one; temporary queues aside) and by
    /// [`Shard::raise_position_floor`].
    position_floor: u64,
}

/// Freed message memory is handed back to the system once a shard's queues
/// shrink by this much from their high-water mark.
const RELEASE_AFTER: u64 = 64 * 1024 * 1024;

/// The same for connections: once this many fewer are open than at the
/// high-water mark (an idle connection holds some 20 KiB; 10,000 of them
/// opened and closed left 240 MiB behind before this).
const RELEASE_AFTER_CONNECTIONS: usize = 1000;

impl Shard {
    pub fn new(id: usize, settings: Arc<BrokerSettings>, now: Instant) -> Shard {
        let shards = settings.total_shards();
        let initial_admission = settings.initial_admission.clone();
        let checks_messages = settings.access.checks_messages();
        let mut shard = Shard {
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
            dispatch_batch: usize::MAX,
            dispatch_later: Vec::new(),
            admitted_buf: Vec::new(),
            gathers: HashMap::new(),
            exchange_stats: HashMap::new(),
            admission: initial_admission,
            ext: None,
            ext_installed: false,
            taps: Vec::new(),
            deferred: VecDeque::new(),
            tapped: HashSet::new(),
            checks_messages,
            holds: crate::holders::Holds::new(),
            hold_times: Default::default(),
            connects: Vec::new(),
            disk_ops: Vec::new(),
            next_disk: 1,
            leaving: Vec::new(),
            position_floor: 0,
            arrivals: Vec::new(),
            stalls: Default::default(),
            closed_totals: Default::default(),
            queued_high: 0,
            conns_high: 0,
        };
        shard.apply_initial_config();
        shard
    }

    /// Every shard plans the same configuration the same way (placement
    /// depends only on the names and the worker count), so each applies it
    /// alone and they agree.
    fn apply_initial_config(&mut self) {
        let settings = self.settings.clone();
        for op in &settings.initial_config {
            let planned = self.catalogue.plan(op.clone(), self.workers(), String::new);
            match planned {
                Ok((events, _)) => {
                    for ev in &events {
                        self.apply_config(ev);
                    }
                }
                Err(e) => tracing::warn!("recovered configuration not applied ({op:?}): {e}"),
            }
        }
    }

    /// Called now and then: whether the queues, or the connections, have
    /// shrunk so much since the last time that the allocator should return
    /// the freed pages (glibc keeps them otherwise, and a broker that held a
    /// million messages or 10,000 connections would stay that size for
    /// good). The runtime trims off the shard's thread: walking the heap took
    /// 10 ms in one poll (found by the stall detector).
    pub fn memory_to_release(&mut self) -> bool {
        let queued: u64 = self.queues.values().map(Queue::bytes).sum();
        let conns = self.conns.len();
        self.queued_high = self.queued_high.max(queued);
        self.conns_high = self.conns_high.max(conns);
        if self.queued_high - queued >= RELEASE_AFTER
            || self.conns_high - conns >= RELEASE_AFTER_CONNECTIONS
        {
            self.queued_high = queued;
            self.conns_high = conns;
            return true;
        }
        false
    }

    /// Every shard of the broker: the workers and the service shard, if any.
    pub fn shards(&self) -> usize {
        self.settings.total_shards()
    }

    /// The runtime: the stall detector's figures, for the shard's reports.
    pub fn set_stalls(&mut self, stalls: crate::stall::StallFigures) {
        self.stalls = stalls;
    }

    /// The worker shards (they own the queues and accept connections).
    pub fn workers(&self) -> usize {
        self.settings.shards
    }

    /// The service shard's id, if the broker has one.
    pub fn service_shard(&self) -> Option<usize> {
        self.settings
            .service_shard
            .as_ref()
            .map(|_| self.settings.shards)
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
            rings: Vec::new(),
        }
    }

    /// The time of the input being handled.
    pub fn now(&self) -> Instant {
        self.now
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
        loop {
            while let Some(msg) = self.outbox[self.id].pop_front() {
                self.on_shard_msg(msg);
            }
            self.deliver_taps();
            if !self.outbox[self.id].is_empty() {
                continue;
            }
            self.flush_acks();
            // The extension writes what the step batched; what it sends this
            // shard is handled in this step too.
            self.with_ext(|ext, shard| ext.end_of_step(shard));
            if self.outbox[self.id].is_empty() {
                break;
            }
        }
    }

    /// The outbox for another shard (the runtime moves it onto the ring).
    pub fn outbox_for(&mut self, shard: usize) -> &mut VecDeque<ShardMsg> {
        &mut self.outbox[shard]
    }

    /// Connections that have output to write since the last call.
    pub fn take_dirty(&mut self, into: &mut Vec<u64>) {
        into.append(&mut self.dirty);
    }

    /// Handles one message from a shard (ourselves included); what it changed
    /// reaches the extension's tap before the next message.
    pub fn on_shard_msg(&mut self, msg: ShardMsg) {
        self.handle_shard_msg(msg);
        self.deliver_taps();
    }

    fn handle_shard_msg(&mut self, msg: ShardMsg) {
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
                // Draining hands out everything it can now (what is left is
                // returned), so only plain credit dispatches in batches.
                let left = match self.queues.get_mut(&queue) {
                    Some(q) if drain => q.add_credit(consumer, credit, drain, &mut out),
                    Some(q) => {
                        q.grant(consumer, credit);
                        None
                    }
                    None => drain.then_some(credit),
                };
                if !drain {
                    self.dispatch(&queue, &mut out);
                }
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
            ShardMsg::ExtRequest { request, reply } => self.on_ext_request(request, reply),
            ShardMsg::Ext(msg) => self.with_ext(move |ext, shard| ext.message(shard, msg)),
            ShardMsg::Arrival(arrival) => self.adopt(*arrival),
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
        let Some(q) = self.queues.get(queue) else {
            let error = ErrorCondition::new(
                condition::NOT_FOUND,
                format!("queue '{queue}' no longer exists"),
            );
            return self.refuse_publish(ack, error);
        };
        // A replica takes messages only from its original, whatever route a
        // publish took (a link attached before the queue became one too).
        if let Some(remote) = &q.settings.replica_of {
            let error = link::replica_refusal(queue, remote);
            return self.refuse_publish(ack, error);
        }
        // The extension may refuse what it cannot keep (the store, with its
        // disk failing).
        let refused = self
            .ext
            .as_ref()
            .and_then(|e| e.refuse_store(queue, &message));
        if let Some(error) = refused {
            return self.refuse_publish(ack, error);
        }
        let Some(q) = self.queues.get_mut(queue) else {
            return;
        };
        match q.enqueue(message.clone(), ack) {
            EnqueueOutcome::Stored(position) => self.stored(queue, position, message, ack),
            EnqueueOutcome::Held => {}
            EnqueueOutcome::Rejected => {
                let error = ErrorCondition::new(
                    condition::RESOURCE_LIMIT_EXCEEDED,
                    format!("queue '{queue}' is full (limit policy reject)"),
                );
                self.refuse_publish(ack, error);
            }
        }
        // A ring or last-value queue may have dropped something to make room.
        self.messages_left(queue);
        let mut out = std::mem::take(&mut self.deliveries_buf);
        self.dispatch(queue, &mut out);
        self.send_deliveries(queue, &mut out);
        self.deliveries_buf = out;
        self.messages_left(queue);
    }

    /// Dispatches one batch of `queue`'s messages into `out`; when more are
    /// waiting, the queue waits for [`Shard::dispatch_more`].
    fn dispatch(&mut self, queue: &Arc<str>, out: &mut Vec<Delivery>) {
        let Some(q) = self.queues.get_mut(queue) else {
            return;
        };
        let before = out.len();
        q.dispatch_up_to(out, before.saturating_add(self.dispatch_batch));
        // Only a batch that filled up can have left something (most
        // dispatches, one per publish, do not get there).
        let filled = out.len() - before >= self.dispatch_batch;
        if filled && q.could_dispatch() && !self.dispatch_later.contains(queue) {
            self.dispatch_later.push(queue.clone());
        }
    }

    /// The runtime: hand out at most `n` deliveries per dispatch, so that a
    /// consumer's credit of thousands over a deep queue does not make one
    /// step encode thousands of messages while the shard's other connections
    /// wait; the rest follows in later steps ([`Shard::dispatch_more`]). The
    /// default is unlimited (a caller that never runs deferred dispatches
    /// loses nothing).
    pub fn set_dispatch_batch(&mut self, n: usize) {
        self.dispatch_batch = n.max(1);
    }

    /// Whether a dispatch stopped at its batch with more to hand out.
    pub fn wants_to_dispatch(&self) -> bool {
        !self.dispatch_later.is_empty()
    }

    /// The runtime, in a later step: the next batch of every queue that
    /// stopped at its batch.
    pub fn dispatch_more(&mut self) {
        for queue in std::mem::take(&mut self.dispatch_later) {
            self.after_dequeue(&queue);
        }
    }

    /// A message is stored at `position`: the tap reports it, and its publisher
    /// is settled now or, when holders hold the queue, once they released it.
    fn stored(&mut self, queue: &Arc<str>, position: u64, message: Bytes, ack: Option<AckTo>) {
        if !self.tapped.is_empty() && self.tapped.contains(queue) {
            self.raise(ext::Tap::Stored {
                queue: queue.clone(),
                position,
                message,
            });
        }
        let Some(ack) = ack else { return };
        let since = self.now;
        if let Some(Held { ack, .. }) = self.holds.enqueued(queue, position, Held { ack, since }) {
            self.ack(ack);
        }
    }

    /// After messages left a queue: report that, admit held publishes, dispatch.
    fn after_dequeue(&mut self, queue: &Arc<str>) {
        self.messages_left(queue);
        let mut admitted = std::mem::take(&mut self.admitted_buf);
        let mut out = std::mem::take(&mut self.deliveries_buf);
        if let Some(q) = self.queues.get_mut(queue) {
            q.admit_held(&mut admitted);
        }
        for (ack, position, message) in admitted.drain(..) {
            self.stored(queue, position, message, ack);
        }
        self.dispatch(queue, &mut out);
        self.send_deliveries(queue, &mut out);
        self.messages_left(queue);
        self.admitted_buf = admitted;
        self.deliveries_buf = out;
    }

    /// What left a queue since the last look: a publish held until its
    /// holders released it is settled now that it was consumed, and the tap
    /// reports the positions.
    fn messages_left(&mut self, queue: &Arc<str>) {
        let mut gone = Vec::new();
        let mut again = Vec::new();
        if let Some(q) = self.queues.get_mut(queue) {
            q.take_dequeued(&mut gone);
            again = q.take_redelivered();
        }
        if !again.is_empty() && self.tapped.contains(queue) {
            self.raise(ext::Tap::Redelivered {
                queue: queue.clone(),
                counts: again,
            });
        }
        if gone.is_empty() {
            return;
        }
        for &p in &gone {
            if let Some(held) = self.holds.dequeued(queue, p) {
                self.settle_held(held);
            }
        }
        if !self.tapped.is_empty() && self.tapped.contains(queue) {
            self.raise(ext::Tap::Dequeued {
                queue: queue.clone(),
                positions: gone,
            });
        }
    }

    /// Settles a publisher's message as stored.
    /// Tells a publisher its message was not taken.
    fn refuse_publish(&mut self, ack: Option<AckTo>, error: ErrorCondition) {
        if let Some(ack) = ack {
            self.send(
                ack.shard,
                ShardMsg::Ack {
                    token: ack.token,
                    rejected: Some(error),
                },
            );
        }
    }

    /// Settles a publish its holders released, timing how long it waited.
    fn settle_held(&mut self, held: Held) {
        self.hold_times
            .observe(self.now.saturating_duration_since(held.since));
        self.ack(held.ack);
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

    /// Creates or drops owned queues as configuration events say; the tap
    /// reports the change.
    fn apply_config(&mut self, ev: &ConfigEvent) {
        self.catalogue.apply(ev);
        self.raise(ext::Tap::Applied(ev.clone()));
        match ev {
            ConfigEvent::QueueDeclared {
                name,
                owner,
                settings,
            } if *owner == self.id => match self.queues.get_mut(name) {
                // Re-declared with other settings (a backup catching up, a
                // queue becoming a replica: its consumers go, unless local
                // consumers of replicas are allowed).
                Some(q) => {
                    let becomes_replica =
                        q.settings.replica_of.is_none() && settings.replica_of.is_some();
                    q.settings = settings.clone();
                    if becomes_replica && !self.settings.replica_consumers {
                        let remote = settings.replica_of.as_deref().unwrap_or_default();
                        let error = link::replica_refusal(name, remote);
                        for consumer in q.consumer_refs() {
                            let error = error.clone();
                            self.send(consumer.shard, ShardMsg::ConsumerGone { consumer, error });
                        }
                    }
                }
                None => {
                    let mut q = Queue::new(name.clone(), settings.clone());
                    q.raise_next_position(self.position_floor);
                    self.queues.insert(name.clone(), q);
                }
            },
            ConfigEvent::QueueDeleted { name } => {
                // Nothing waits for a deleted queue.
                let mut released = Vec::new();
                self.holds.remove_queue(name, &mut released);
                for held in released {
                    self.settle_held(held);
                }
                self.tapped.remove(name);
                if let Some(mut q) = self.queues.remove(name) {
                    // (A temporary queue is never copied anywhere: its
                    // positions need not stay unique.)
                    if !q.settings.auto_delete {
                        self.position_floor = self.position_floor.max(q.next_position());
                    }
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
    pub fn owner_of(&self, queue: &str) -> usize {
        self.catalogue
            .queues
            .get(queue)
            .map(|q| q.owner)
            .unwrap_or(0)
    }

    /// A new connection; returns its id.
    pub fn add_connection(&mut self, engine: Connection, peer: String) -> u64 {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(id, Conn::new(engine, peer, self.now));
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
