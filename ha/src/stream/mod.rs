//! The replication stream: one [`Replication`] per shard, plugged into the
//! shard through the extension seam of `tandem-shards`. It plays whichever
//! parts its shard has:
//!
//! - `owner.rs`, on a primary's queue owners: taps each replicated queue,
//!   sends a backup the snapshot (`queue-reset`, then every message) and then
//!   every enqueue and dequeue, holds publishers' settlements for each backup
//!   (one settlement holder per backup link) and releases them as acks come;
//! - `primary.rs`, on a primary's shard 0: registers backups with the HA
//!   role, sends them the replicated configuration, starts their queue
//!   streams, streams configuration changes, and carries out the role's
//!   commands;
//! - `link_host.rs`, on the shard that accepted a backup's `$ha.replication`
//!   link: writes the events owners send it within the backup's credit, in
//!   batches, and turns settled deliveries into acks for the owners;
//! - `backup.rs`, on a backup's replication shard: the outbound link, applying
//!   the stream in order (configuration through shard 0, the ordering point,
//!   messages at the primary's positions on their owners), settling only what
//!   was applied; the HA role on shard 0 opens and closes the link and hears
//!   its events.
//!
//! Shard 0 also holds the broker's HA role ([`crate::broker::HaBroker`]) and
//! answers the `ha-broker` management entity.

mod backup;
pub mod codec;
mod feed;
mod link_host;
mod owner;
mod primary;
mod probe;
mod sync;

use std::collections::VecDeque;

use hashbrown::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tandem_shards::amqp::codec::Value;
use tandem_shards::amqp::connection::{Connection, Event as EngineEvent, LinkKey};
use tandem_shards::amqp::performative::{Attach, ErrorCondition};
use tandem_shards::broker::ext::{ExtMsg, Extension, Tap};
use tandem_shards::broker::Shard;
use tandem_shards::exchange::BUILT_IN;
use tandem_shards::management::{status, Request, Response};
use tandem_shards::queue::QueueSettings;

use crate::guard::MemberId;
use crate::role::{BackupIdentity, HaHandler};
use codec::Encoded;

pub use codec::NODE;

/// How the stream runs (from the `ha-*` options).
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// `ha-replicate`: the level of queues and exchanges that set none.
    pub replicate: String,
    /// `ha-username` / `ha-password` of the backup's link.
    pub username: Option<String>,
    pub password: Option<String>,
    /// `ha-mechanism`: the SASL mechanism the link logs in with (PLAIN,
    /// ANONYMOUS or EXTERNAL); `None` picks from what the primary offers.
    pub mechanism: Option<String>,
    /// `link-heartbeat-interval`.
    pub heartbeat: Duration,
    /// `ha-min-backups-timeout`: how long a publish waits for `ha-min-backups`
    /// ready backups before it is rejected.
    pub min_backups_timeout: Duration,
    /// Where shard 0 keeps the epoch the role knows (`data-dir/ha-epoch`),
    /// rewritten whenever it changes.
    pub epoch_file: Option<std::path::PathBuf>,
    /// `ha-cluster`: the broker is a member of a cluster (shard 0 runs the
    /// role).
    pub cluster: bool,
    /// `ha-queue-replication` (or `ha-cluster`): the broker serves replicas
    /// of its queues to other brokers and keeps replicas of theirs.
    pub queue_replication: bool,
}

/// Where a backup's replication stream is written: its link on some shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplicaSink {
    pub(crate) member: MemberId,
    pub(crate) shard: usize,
    pub(crate) conn: u64,
    pub(crate) link: LinkKey,
}

/// Position ranges (first, last) of one queue, sorted and disjoint.
pub(crate) type Ranges = Vec<(u64, u64)>;

/// What one shard of a backup holds: each queue's positions.
pub(crate) type ShardHoldings = Vec<(Arc<str>, Ranges)>;

/// What a backup said it holds when it attached: queue name -> positions.
pub(crate) type Holdings = Arc<HashMap<String, Ranges>>;

/// The position floor of a broker promoted at `epoch`: positions from here
/// on were never given by an earlier primary. Each epoch has 2^40 positions
/// per queue (a position reads as `epoch:n`, see [`crate::position_text`]);
/// epochs beyond 2^24 share the last floor, and are logged.
pub(crate) fn epoch_floor(epoch: u64) -> u64 {
    const LAST: u64 = (1 << 24) - 1;
    if epoch > LAST {
        tracing::warn!(
            "HA: epoch {epoch} is beyond {LAST}: positions are no longer unique to an epoch"
        );
    }
    (epoch.min(LAST) << crate::EPOCH_SHIFT) + 1
}

/// What an `enq` delivery acknowledges when the backup settles it.
pub(crate) type EnqueueMeta = Option<(Arc<str>, u64)>;

/// Why a backup's replication link is refused: the AMQP condition, the
/// description, and who refuses: our broker id, epoch and status (a joining
/// broker weighs the status before promotion, an epoch probe the epoch).
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub condition: &'static str,
    pub reason: String,
    pub us: Option<crate::node::PeerEpoch>,
}

/// What one shard's stream tells another's.
#[derive(Debug)]
pub(crate) enum Msg {
    /// Shard 0 -> owner: start streaming a queue to a backup (`held`: the
    /// positions the backup said it holds of it, if it said).
    StartReplica {
        queue: Arc<str>,
        sink: ReplicaSink,
        held: Option<Vec<(u64, u64)>>,
    },
    /// Owner -> shard 0: the backup caught up on this queue.
    QueueCaughtUp {
        member: MemberId,
        queue: Arc<str>,
    },
    /// Owner or shard 0 -> link host: events for the backup's stream, in
    /// order (what one step produced for that backup).
    Out {
        sink: ReplicaSink,
        events: Backlog,
    },
    /// Link host -> owner: each backup has each queue up to the position
    /// (one step's settlements).
    Acks {
        acks: Acks,
    },
    /// Shard 0 -> all: settlements wait for this backup from now on.
    GuardMember {
        member: MemberId,
    },
    /// Shard 0 (the HA role) -> the service shard: probe `brokers[index]`.
    Probe {
        index: usize,
        address: String,
        who: BackupIdentity,
    },
    /// The service shard -> shard 0: what the probed broker answered.
    ProbeAnswer {
        index: usize,
        answer: Option<crate::node::PeerEpoch>,
    },
    /// A link host -> shard 0: the backup settled every sync marker up to
    /// `upto`.
    SyncAcked {
        member: MemberId,
        upto: u64,
    },
    /// Owner -> shard 0: what a backup's snapshot of one queue sent (and
    /// what the backup already held), for the per-backup counters.
    CatchUpSent {
        member: MemberId,
        sent: owner::CatchUpCounters,
    },
    /// Shard 0 -> all: the backup is gone.
    DropMember {
        member: MemberId,
    },
    /// Shard 0 -> all: too few backups are ready; settlements wait (see
    /// [`crate::guard::MIN_BACKUPS`]).
    Withhold,
    /// Shard 0 -> all: enough backups are ready again.
    Release,
    /// Shard 0 -> all: a newer primary exists; what settlements wait for no
    /// longer counts here and is forgotten.
    SteppedDown,
    /// Link host -> shard 0: a backup attached its link, saying what it
    /// holds.
    BackupAttached {
        sink: ReplicaSink,
        who: BackupIdentity,
        holdings: Holdings,
    },
    /// Shard 0 -> link host: the HA role refused the backup.
    Refused {
        sink: ReplicaSink,
        refusal: Refusal,
    },
    /// Shard 0 -> link host: the HA role accepted the backup (our epoch and
    /// cluster id).
    Accepted {
        sink: ReplicaSink,
        epoch: u64,
        cluster_id: Option<String>,
    },
    /// Shard 0 -> link host: close a dropped backup's link (or an owner: a
    /// queue replica's, its queue gone).
    CloseLink {
        sink: ReplicaSink,
    },
    /// A queue replica's feed -> the queue's owner: which positions of it
    /// are held here (answered with `FeedHeld`).
    FeedHoldings {
        origin: usize,
        attempt: u64,
        queue: Arc<str>,
    },
    FeedHeld {
        attempt: u64,
        ranges: Ranges,
    },
    /// The replication shard -> shard 0: what a queue replica's feed is
    /// doing (`None`: it stopped).
    FeedStatus {
        queue: Arc<str>,
        status: Option<feed::ReplicaStatus>,
    },
    /// Shard 0 of a cluster member -> the replication shard: run queue
    /// replicas' feeds (we are the primary), or stop them.
    FeedsRun {
        run: bool,
    },
    /// Link host -> shard 0.
    BackupHeard {
        member: MemberId,
    },
    BackupGone {
        member: MemberId,
    },
    /// Backup shard 0 -> owner: store replicated messages at the primary's
    /// positions (the `enq` events of one delivery that this owner holds).
    Enqueue {
        items: Vec<ToStore>,
        origin: usize,
        batch: u64,
    },
    /// Owner -> the backup's stream: how many of the batch are stored (the
    /// others come as acks once the store has them), or the first message
    /// that could not be (its queue is missing) and its position.
    Applied {
        batch: u64,
        stored: usize,
        missing: Option<(Arc<str>, u64)>,
    },
    Dequeue {
        queue: Arc<str>,
        positions: Vec<u64>,
    },
    /// Drop the messages of a queue about to be re-sent whole.
    Purge {
        queue: Arc<str>,
    },
    /// Drop the messages of a queue at positions not in `keep` (a backup's
    /// incremental catch-up; the primary's next position is `next`).
    Retain {
        queue: Arc<str>,
        next: u64,
        keep: Vec<(u64, u64)>,
    },
    /// A backup's stream -> every shard: the positions of each queue you own
    /// (before attaching, to say what we hold).
    Holdings {
        origin: usize,
        generation: u64,
    },
    Held {
        generation: u64,
        queues: ShardHoldings,
    },
    /// Shard 0 of a broker just promoted -> every shard: raise the position
    /// floor; answer `FloorRaised` (clients are admitted once all did).
    RaiseFloor {
        floor: u64,
    },
    FloorRaised,
    /// A shard's store -> the backup's stream: it cannot write (`Some`), or
    /// can again.
    StoreHealth {
        shard: usize,
        failing: Option<String>,
    },
    /// Backup's stream -> owner: answer `Fenced` once what came before is handled.
    Fence {
        origin: usize,
        generation: u64,
    },
    Fenced {
        generation: u64,
    },
    /// Shard 0 (the HA role) -> the backup's stream: open the replication link
    /// (link generation `generation`).
    Connect {
        index: usize,
        address: String,
        who: BackupIdentity,
        generation: u64,
    },
    /// Shard 0 -> the backup's stream: close the replication link.
    Disconnect {
        generation: u64,
    },
    /// The backup's stream -> shard 0: what happened on the link of
    /// `generation`, in order.
    ToRole {
        generation: u64,
        events: Vec<crate::role::LinkEvent>,
    },
}

/// One replicated message for its owner to store.
#[derive(Debug)]
pub(crate) struct ToStore {
    pub(crate) queue: Arc<str>,
    pub(crate) position: u64,
    pub(crate) message: Bytes,
}

fn msg(m: Msg) -> ExtMsg {
    Box::new(m)
}

/// Hands `owner` replicated messages to store at their positions; the batch
/// token its answers (`Applied`, then acks one by one) carry.
fn send_to_owner(shard: &mut Shard, owner: usize, items: Vec<ToStore>) -> u64 {
    let batch = shard.new_ack_token();
    let origin = shard.id;
    shard.send_ext(
        owner,
        msg(Msg::Enqueue {
            items,
            origin,
            batch,
        }),
    );
    batch
}

/// How much of an object a backup gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
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

/// One shard's part of the replication stream.
pub struct Replication {
    settings: Arc<StreamSettings>,
    /// Events for each backup's link produced this step, sent as one message
    /// per link at its end (in order, whichever part produced them).
    outgoing: Vec<(ReplicaSink, Backlog)>,
    /// Shard 0: the broker's HA role.
    role: Option<Box<dyn HaHandler>>,
    /// Shard 0: the generation of the role's replication link (bumped by every
    /// connect and disconnect).
    link_generation: u64,
    /// Shard 0: what was last written to the epoch file.
    persisted: Option<crate::epoch_file::Known>,
    /// Shard 0 of a broker just promoted: shards yet to raise their position
    /// floor (clients wait until none are left).
    floors_pending: usize,
    owner: owner::OwnerState,
    primary: primary::PrimaryState,
    host: link_host::HostState,
    backup: backup::BackupState,
    probes: probe::ProbeState,
    sync: sync::SyncState,
    feeds: feed::FeedState,
    /// Shard 0 of a cluster member: whether the replication shard was last
    /// told to run queue replicas' feeds (it does on the primary).
    feeds_told: Option<bool>,
}

impl Replication {
    /// The stream of one shard; shard 0's carries the broker's HA `role`.
    pub fn new(settings: Arc<StreamSettings>, role: Option<Box<dyn HaHandler>>) -> Replication {
        Replication {
            settings,
            outgoing: Vec::new(),
            role,
            link_generation: 0,
            persisted: None,
            floors_pending: 0,
            owner: Default::default(),
            primary: Default::default(),
            host: Default::default(),
            backup: Default::default(),
            probes: Default::default(),
            sync: Default::default(),
            feeds: Default::default(),
            feeds_told: None,
        }
    }

    /// The replication level of a queue: its own `qpid.replicate`, else the
    /// broker's `ha-replicate`; temporary and auto-delete queues never replicate.
    pub(crate) fn queue_level(&self, settings: &QueueSettings) -> Level {
        if settings.auto_delete {
            return Level::None;
        }
        self.level_of(settings.replicate.as_deref())
    }

    /// The level of an exchange; built-in exchanges never replicate.
    pub(crate) fn exchange_level(&self, name: &str, replicate: Option<&str>) -> Level {
        if BUILT_IN.iter().any(|(n, _)| *n == name) {
            return Level::None;
        }
        self.level_of(replicate)
    }

    fn level_of(&self, own: Option<&str>) -> Level {
        Level::parse(own.unwrap_or(&self.settings.replicate))
    }

    /// Queues an event for a backup's link (sent at the end of the step).
    pub(crate) fn out_to(&mut self, sink: ReplicaSink, event: Encoded, meta: EnqueueMeta) {
        match self.outgoing.iter_mut().find(|(s, _)| *s == sink) {
            Some((_, events)) => events.push_back((event, meta)),
            None => self.outgoing.push((sink, Backlog::from([(event, meta)]))),
        }
    }

    /// Sends each link the events this step produced for it.
    fn flush_out(&mut self, shard: &mut Shard) {
        for (sink, events) in self.outgoing.drain(..) {
            shard.send_ext(sink.shard, msg(Msg::Out { sink, events }));
        }
    }
}

impl Extension for Replication {
    fn manages(&self, entity_type: &str) -> bool {
        entity_type == "ha-broker"
    }

    fn manage(&mut self, shard: &mut Shard, req: Request) -> Response {
        let now = shard.now();
        let resp = match self.role.as_mut() {
            None => Response::error(
                status::NOT_FOUND,
                "this broker is not in an HA cluster (ha-cluster = no)",
            ),
            // What `tandem-config --sync` asks after a change it could make.
            Some(_) if req.operation == "SYNC" => self.sync_request(shard),
            Some(_) if req.operation == "SYNC-STATUS" => self.sync_status(&req.body),
            Some(ha) if req.operation == "READ" || req.operation == "QUERY" => {
                let attributes = ha.attributes();
                Response::ok(Value::Map(
                    attributes
                        .into_iter()
                        .map(|(k, v)| match (k, v) {
                            ("members", Value::List(members)) => {
                                (Value::string(k), Value::List(self.with_catch_up(members)))
                            }
                            (k, v) => (Value::string(k), v),
                        })
                        .collect(),
                ))
            }
            Some(_) if !req.cluster => Response::error(
                status::FORBIDDEN,
                format!(
                    "{} on ha-broker is for the cluster only: connect as the cluster's user (ha-username) with qpid.ha-admin",
                    req.operation
                ),
            ),
            Some(ha) => match ha.operation(&req.operation, &req.body, now) {
                Ok(body) => Response::ok(body),
                Err((code, why)) => Response::error(code, why),
            },
        };
        // The operation may have changed the role: apply it before replying.
        self.poll_role(shard, now);
        resp
    }

    fn is_admin(&self, properties: Option<&Value>) -> bool {
        self.settings.cluster && crate::role::is_admin_connection(properties)
    }

    fn claims(&self, address: &str) -> bool {
        address == NODE
    }

    /// A queue replica's link asks to consume the queue it copies.
    fn access_node<'a>(&self, attach: &'a Attach) -> Option<&'a str> {
        link_host::replica_queue(attach.properties.as_ref())
    }

    fn queue_attributes(&self, shard: &Shard, name: &str) -> Vec<(&'static str, Value)> {
        self.replica_attributes(shard, name)
    }

    /// The replication shard serves the backups' links, if the broker has one.
    fn home(&self, shard: &Shard) -> Option<usize> {
        shard.service_shard()
    }

    fn attach(&mut self, shard: &mut Shard, conn: u64, link: LinkKey, attach: Attach) {
        self.host_link(shard, conn, link, attach);
    }

    fn link_event(&mut self, shard: &mut Shard, conn: u64, event: &EngineEvent) {
        match event {
            EngineEvent::Disposition { disposition, .. }
                if disposition.role == tandem_shards::amqp::performative::Role::Receiver
                    && disposition.settled =>
            {
                let last = disposition.last.unwrap_or(disposition.first);
                self.on_settled(conn, disposition.first, last);
            }
            EngineEvent::Credit { link, .. } => self.drain_link(shard, conn, *link),
            EngineEvent::Detached { link, .. } => self.link_gone(shard, conn, *link),
            _ => {}
        }
    }

    fn owned_event(&mut self, shard: &mut Shard, conn: u64, event: EngineEvent) {
        if self.is_feed(conn) {
            return self.feed_event(shard, conn, event);
        }
        if self.is_probe(conn) {
            return self.probe_event(shard, conn, event);
        }
        self.outbound_event(shard, conn, event);
    }

    fn heard(&mut self, shard: &mut Shard, conn: u64, now: Instant) {
        if self.is_outbound(conn) {
            self.primary_heard();
        } else if !self.is_feed(conn) {
            self.link_heard(shard, conn, now);
        }
    }

    fn connected(&mut self, shard: &mut Shard, token: u64, address: &str) -> Option<Connection> {
        if Self::is_feed_token(token) {
            return self.feed_engine(shard, token, address);
        }
        if Self::is_probe_token(token) {
            return self.probe_engine(shard, token, address);
        }
        // One outbound link at a time: the token is its index.
        self.outbound_engine(shard, address)
    }

    fn opened(&mut self, shard: &mut Shard, token: u64, conn: u64) {
        if Self::is_feed_token(token) {
            return self.feed_opened(token, conn);
        }
        if Self::is_probe_token(token) {
            return self.probe_opened(token, conn);
        }
        self.outbound_opened_as(shard, token, conn);
    }

    fn connect_failed(&mut self, shard: &mut Shard, token: u64) {
        if Self::is_feed_token(token) {
            return self.feed_connect_failed(shard, token);
        }
        if Self::is_probe_token(token) {
            return self.probe_failed(shard, token);
        }
        self.outbound_failed(token);
    }

    fn config_done(
        &mut self,
        shard: &mut Shard,
        req: u64,
        result: Result<tandem_shards::broker::ConfigDone, ErrorCondition>,
    ) {
        self.configured(shard, req, result);
    }

    fn acked(&mut self, shard: &mut Shard, token: u64, rejected: Option<&ErrorCondition>) {
        if let Some(why) = rejected.filter(|_| self.is_feed_batch(token)) {
            // Not kept after all: the remote sends it again once we say
            // (reconnecting) that we lack it.
            return self.feed_batch_rejected(shard, token, why);
        }
        if !self.feed_batch_applied(shard, token, 1, false) {
            self.stored_later(token);
        }
    }

    fn message(&mut self, shard: &mut Shard, message: ExtMsg) {
        let Ok(m) = message.downcast::<Msg>() else {
            tracing::error!("HA: a shard message of an unknown kind was dropped");
            return;
        };
        match *m {
            Msg::StartReplica { queue, sink, held } => self.start_replica(shard, queue, sink, held),
            Msg::QueueCaughtUp { member, queue } => self.queue_caught_up(shard, member, queue),
            Msg::Out { sink, events } => self.out(sink, events),
            Msg::Acks { acks } => {
                for (queue, member, position) in acks {
                    self.acked(shard, queue, member, position);
                }
            }
            Msg::GuardMember { member } => self.guard_member(shard, member),
            Msg::DropMember { member } => self.drop_member(shard, member),
            Msg::Probe {
                index,
                address,
                who,
            } => self.probe(shard, index, address, who),
            Msg::ProbeAnswer { index, answer } => self.probe_answer(shard, index, answer),
            Msg::SyncAcked { member, upto } => self.sync_acked(member, upto),
            Msg::CatchUpSent { member, sent } => self.catch_up_sent(member, sent),
            Msg::Withhold => self.withhold(shard),
            Msg::Release => self.release(shard),
            Msg::SteppedDown => self.stepped_down(shard),
            Msg::BackupAttached {
                sink,
                who,
                holdings,
            } => self.backup_attached(shard, sink, who, holdings),
            Msg::Refused { sink, refusal } => self.refused(shard, sink, refusal),
            Msg::Accepted {
                sink,
                epoch,
                cluster_id,
            } => self.accepted(shard, sink, epoch, cluster_id),
            Msg::CloseLink { sink } if crate::guard::is_queue_replica(sink.member) => {
                let error = ErrorCondition::new(
                    "amqp:resource-deleted",
                    "the replicated queue was deleted on this broker",
                );
                shard.conn_close(sink.conn, error);
            }
            Msg::CloseLink { sink } => shard.conn_close(sink.conn, dropped_by_primary()),
            Msg::FeedHoldings {
                origin,
                attempt,
                queue,
            } => {
                let ranges = shard.position_ranges(&queue);
                shard.send_ext(origin, msg(Msg::FeedHeld { attempt, ranges }));
            }
            Msg::FeedHeld { attempt, ranges } => self.feed_held(shard, attempt, ranges),
            Msg::FeedStatus { queue, status } => self.feed_status(queue, status),
            Msg::FeedsRun { run } => self.run_feeds(shard, run),
            Msg::BackupHeard { member } => {
                self.link_event_to_role(shard, crate::role::LinkEvent::BackupHeard { member })
            }
            Msg::BackupGone { member } => {
                self.link_event_to_role(shard, crate::role::LinkEvent::BackupLost { member })
            }
            Msg::Enqueue {
                items,
                origin,
                batch,
            } => {
                // Stored as a publish would be (the store, if any, journals
                // them first); those it holds are acknowledged later, one by one.
                let ack = tandem_shards::queue::AckTo {
                    shard: origin,
                    token: batch,
                };
                let (mut stored, mut missing) = (0, None);
                for item in items {
                    match shard.store_at(&item.queue, item.position, item.message, ack) {
                        Some(true) => stored += 1,
                        Some(false) => {}
                        None => {
                            missing.get_or_insert((item.queue, item.position));
                        }
                    }
                }
                shard.send_ext(
                    origin,
                    msg(Msg::Applied {
                        batch,
                        stored,
                        missing,
                    }),
                );
            }
            Msg::Applied {
                batch,
                stored,
                missing,
            } => {
                if !self.feed_batch_applied(shard, batch, stored, missing.is_some()) {
                    self.applied(shard, batch, stored, missing);
                }
            }
            Msg::Dequeue { queue, positions } => shard.remove_at(&queue, &positions),
            Msg::Purge { queue } => shard.purge(&queue),
            Msg::Retain { queue, next, keep } => retain(shard, &queue, next, &keep),
            Msg::Holdings { origin, generation } => {
                let queues = shard
                    .queue_names()
                    .into_iter()
                    .filter(|q| shard.queue(q).is_some_and(|q| !q.settings.auto_delete))
                    .map(|q| {
                        let ranges = shard.position_ranges(&q);
                        (q, ranges)
                    })
                    .filter(|(_, r)| !r.is_empty())
                    .collect();
                shard.send_ext(origin, msg(Msg::Held { generation, queues }));
            }
            Msg::Held { generation, queues } => self.held(shard, generation, queues),
            Msg::RaiseFloor { floor } => {
                shard.raise_position_floor(floor);
                shard.send_ext(0, msg(Msg::FloorRaised));
            }
            Msg::FloorRaised => self.floor_raised(shard),
            Msg::StoreHealth {
                shard: from,
                failing,
            } => self.store_health(shard, from, failing),
            Msg::Fence { origin, generation } => {
                shard.send_ext(origin, msg(Msg::Fenced { generation }));
            }
            Msg::Fenced { generation } => self.fenced(shard, generation),
            Msg::Connect {
                index,
                address,
                who,
                generation,
            } => self.connect(shard, index, address, who, generation),
            Msg::Disconnect { generation } => self.disconnect(shard, generation),
            Msg::ToRole { generation, events } => {
                // Events of a link the role has replaced or closed since.
                if generation != self.link_generation {
                    return;
                }
                for event in events {
                    self.link_event_to_role(shard, event);
                }
            }
        }
    }

    fn store_failing(&mut self, shard: &mut Shard, why: Option<&str>) {
        let home = shard.service_shard().unwrap_or(0);
        let failing = why.map(str::to_owned);
        let from = shard.id;
        shard.send_ext(
            home,
            msg(Msg::StoreHealth {
                shard: from,
                failing,
            }),
        );
    }

    fn facts(&self) -> Vec<(&'static str, String)> {
        let Some(role) = &self.role else {
            return Vec::new();
        };
        let mut facts = vec![
            ("ha-status", role.status().as_str().to_owned()),
            ("ha-epoch", role.epoch().to_string()),
            ("ha-ready-backups", role.ready_members().len().to_string()),
        ];
        facts.extend(role.cluster_id().map(|id| ("ha-cluster-id", id)));
        facts
    }

    fn series(&self, now: Instant) -> Vec<tandem_shards::stats::Series> {
        let mut all = self.backup_series(now);
        if let Some(role) = &self.role {
            for m in role.members() {
                for s in crate::status::BrokerStatus::ALL {
                    all.push(tandem_shards::stats::Series {
                        name: "tandem_ha_member_status",
                        help: "1 for each cluster member's status as this broker knows it, 0 for the others",
                        labels: vec![
                            ("broker_id", m.broker_id.clone()),
                            ("address", m.address.clone()),
                            ("status", s.as_str().to_owned()),
                        ],
                        value: f64::from(u8::from(s == m.status)),
                    });
                }
            }
        }
        all
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = self.owner.catch_up_sent;
        let mut all = vec![
            ("ha-catch-up-messages", c.messages),
            ("ha-catch-up-bytes", c.bytes),
            ("ha-catch-up-kept", c.kept),
            ("ha-consumed-not-sent", self.host.skipped.0),
            ("ha-consumed-not-sent-bytes", self.host.skipped.1),
        ];
        if let Some(role) = &self.role {
            all.extend(role.counters());
        }
        all
    }

    fn tap(&mut self, shard: &mut Shard, tap: Tap) {
        match tap {
            Tap::Stored {
                queue,
                position,
                message,
            } => self.owned_stored(shard, &queue, position, message),
            Tap::Dequeued { queue, positions } => self.stream_dequeues(&queue, positions),
            // Backups do not keep delivery counts yet.
            Tap::Redelivered { .. } => {}
            Tap::Applied(event) => {
                self.config_applied(shard, &event);
                self.feed_config(shard, &event);
            }
            Tap::Ordered(events) => self.stream_config(shard, &events),
        }
    }

    fn poll(&mut self, shard: &mut Shard, now: Instant) {
        self.poll_role(shard, now);
        self.reject_overdue(shard, now);
        self.poll_feeds(shard, now);
    }

    fn end_of_step(&mut self, shard: &mut Shard) {
        self.flush_out(shard);
        self.flush_links(shard);
        self.flush_acks(shard);
        self.flush_settles(shard);
        self.flush_to_role(shard);
        self.flush_feeds(shard);
    }
}

/// A backup drops what it holds of `queue` at positions not in `keep`: consumed
/// on the primary while the backup was away, or never there (a new primary
/// that had not received them: the backup's history is cut back to the
/// primary's, and says so).
fn retain(shard: &mut Shard, queue: &str, next: u64, keep: &[(u64, u64)]) {
    let gone: Vec<u64> = shard
        .queue(queue)
        .map(|q| q.positions())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| !tandem_shards::ranges::contains(keep, *p))
        .collect();
    let ahead = gone.iter().filter(|p| **p >= next).count();
    if ahead > 0 {
        tracing::warn!(
            "HA: queue '{queue}': dropping {ahead} messages the primary never had (our history was ahead of it)"
        );
    }
    tracing::info!(
        "HA: queue '{queue}' caught up incrementally: kept {}, dropped {} no longer on the primary",
        tandem_shards::ranges::count(keep),
        gone.len()
    );
    shard.remove_at(queue, &gone);
}

/// Backlog entries of a link: an event and what its delivery acknowledges.
type Backlog = VecDeque<(Encoded, EnqueueMeta)>;

/// Unsettled replication deliveries of a link, by delivery id.
type Unsettled = HashMap<u32, Delivered>;

/// One unsettled replication delivery.
struct Delivered {
    /// The queue positions its `enq` events acknowledge, with the bytes each
    /// event took (0 for one cancelled, not sent).
    acks: Vec<(Arc<str>, u64, usize)>,
    /// Its bytes.
    size: usize,
    /// When it was written.
    sent: Instant,
}

/// Queue names.
type Names = HashSet<Arc<str>>;

/// Backups' acknowledgements: queue, backup, highest position settled.
type Acks = Vec<(Arc<str>, MemberId, u64)>;

/// Adds `item` to the group of `key` (groups are few: one per shard).
fn push_for<T>(groups: &mut Vec<(usize, Vec<T>)>, key: usize, item: T) {
    match groups.iter_mut().find(|(k, _)| *k == key) {
        Some((_, items)) => items.push(item),
        None => groups.push((key, vec![item])),
    }
}

/// How a primary closes the link of a backup it no longer waits for: the
/// backup must know that it missed what was settled since, and must not stay
/// `ready` (see [`dropped_by_primary_said`]).
pub(crate) fn dropped_by_primary() -> tandem_shards::amqp::performative::ErrorCondition {
    use tandem_shards::amqp::performative::{condition, ErrorCondition};
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
pub(crate) fn dropped_by_primary_said(
    error: &tandem_shards::amqp::performative::ErrorCondition,
) -> bool {
    matches!(
        error
            .info
            .as_ref()
            .and_then(|i| i.map_get("tandem.ha-dropped")),
        Some(Value::Bool(true))
    )
}

/// What `runtime::start` runs on every shard of a broker outside a cluster
/// that replicates queues (`ha-queue-replication`): the stream without an
/// HA role.
pub fn queue_replication_extension(
    settings: StreamSettings,
) -> tandem_shards::runtime::ExtensionFactory {
    let settings = Arc::new(settings);
    Arc::new(move |_shard: usize| -> Box<dyn Extension> {
        Box::new(Replication::new(settings.clone(), None))
    })
}

/// What `runtime::start` runs on every shard: its part of the stream; shard
/// 0's carries the broker's HA role, which `role` builds on that shard's
/// thread.
pub fn extension(
    settings: StreamSettings,
    role: impl Fn() -> Box<dyn HaHandler> + Send + Sync + 'static,
) -> tandem_shards::runtime::ExtensionFactory {
    let settings = Arc::new(settings);
    Arc::new(move |shard: usize| -> Box<dyn Extension> {
        let role = (shard == 0).then(&role);
        Box::new(Replication::new(settings.clone(), role))
    })
}
