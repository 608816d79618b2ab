//! Queue replication between brokers that are not one cluster (`tandem-ha
//! replicate`): a queue whose settings name another broker (`replica-of`)
//! copies that broker's queue of the same name. It is the replication
//! stream of one queue, over an ordinary authenticated connection: the
//! replica's broker attaches to the remote's `$ha.replication` with
//! `tandem.ha-queue` and what it holds of the queue (the incremental
//! handshake of the backups), the remote's owner of the queue sends
//! `queue-sync` (or `queue-reset`), the messages the replica lacks, then a
//! `sync` marker where the catch-up ends, and from then on every enqueue and
//! dequeue, at the remote's positions. Nothing on the remote waits for a
//! replica.
//!
//! Feeds run on the replication shard of a stand-alone broker, and of a
//! cluster's primary (its backups get the replica's messages through their
//! own cluster's stream; a newly promoted primary starts the feeds again
//! from its catalogue). A feed cycles through the addresses of `replica-of`
//! as a backup cycles `ha-brokers-url`, so a replica of a cluster follows
//! its primary. What each feed is doing goes to every worker shard, which
//! shows it in the queue's management row.

use hashbrown::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tandem_shards::amqp::codec::Value;
use tandem_shards::amqp::connection::{Connection, Event as EngineEvent, LinkKey};
use tandem_shards::amqp::performative::{condition, Attach, ErrorCondition};
use tandem_shards::broker::{accept_in_ranges, ConfigEvent, Shard};
use tandem_shards::url::BrokerUrl;

use super::codec::{ranges_value, Event};
use super::{msg, Msg, Replication, ToStore};

/// Connection tokens of feeds: this plus the attempt's id (probes use
/// `PROBE_TOKEN` plus a peer index, below this).
pub(super) const FEED_TOKEN: u64 = 2 << 32;

/// Credit a feed grants, topped up at half.
const FEED_CREDIT: u32 = 500;

/// How long a feed waits before trying the next address after a failure.
const RETRY: Duration = Duration::from_secs(1);

/// Longest a feed waits for a connection to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a feed is doing, as `replica-state` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Connecting, or waiting to try again.
    Connecting,
    /// Attached; receiving what the replica lacked.
    CatchUp,
    /// Caught up; following every change.
    Ready,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::CatchUp => "catchup",
            Phase::Ready => "ready",
        }
    }
}

/// What shard 0 shows of a feed in its queue's management row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReplicaStatus {
    /// The remote (redacted): shown only while the queue's `replica-of`
    /// still names it, so that management never shows an earlier feed's.
    pub(crate) remote: String,
    pub(crate) phase: Phase,
    /// The address connected to (or last tried).
    pub(crate) address: Option<String>,
    /// Why the last attempt failed, if it did.
    pub(crate) error: Option<String>,
    /// Connection attempts so far.
    pub(crate) attempts: u64,
    /// Messages received and not stored yet.
    pub(crate) lag: u64,
    /// Messages received since the feed started.
    pub(crate) received: u64,
}

/// One replica queue's feed.
struct Feed {
    queue: Arc<str>,
    remote: BrokerUrl,
    /// The current connection attempt (its token is `FEED_TOKEN + attempt`;
    /// batches of an earlier attempt are ignored).
    attempt: u64,
    /// The address of `remote` tried next.
    next_address: usize,
    conn: Option<u64>,
    link: Option<LinkKey>,
    retry_at: Option<Instant>,
    status: ReplicaStatus,
    /// The last delivery applied could not be: the next attach says we hold
    /// nothing, so the remote sends everything.
    distrust: bool,
    /// Deliveries with parts not stored yet (how many parts).
    unapplied: HashMap<(u16, u32), usize>,
    /// The delivery whose settlement ends the catch-up (it carried `sync`).
    catch_up_ends: Option<(u16, u32)>,
    to_settle: Vec<(u16, u32)>,
}

/// A batch of a feed's `enq` events on the queue's owner: the queue, the
/// attempt, the delivery they came in, and how many are not stored yet.
type Batch = (Arc<str>, u64, (u16, u32), usize);

#[derive(Default)]
pub(super) struct FeedState {
    /// By queue name.
    feeds: HashMap<Arc<str>, Feed>,
    next_attempt: u64,
    /// Batches of `enq` events an owner is storing: batch token -> the
    /// queue, attempt, delivery and how many are not stored yet.
    batches: HashMap<u64, Batch>,
    /// Whether feeds run on this shard: the replication shard of a
    /// stand-alone broker, or of a cluster's primary.
    running: bool,
    /// Feeds whose status changed this step (sent to shard 0 at its end).
    changed: Vec<Arc<str>>,
    /// Whether a stand-alone broker's feeds were started.
    started: bool,
    /// Shard 0: each replica queue's feed, as last reported.
    pub(super) shown: HashMap<Arc<str>, ReplicaStatus>,
}

impl Replication {
    /// The shard that runs feeds.
    fn feed_home(shard: &Shard) -> usize {
        shard.service_shard().unwrap_or(0)
    }

    pub(super) fn is_feed_token(token: u64) -> bool {
        token >= FEED_TOKEN
    }

    pub(super) fn is_feed(&self, conn: u64) -> bool {
        self.feeds.feeds.values().any(|f| f.conn == Some(conn))
    }

    /// Feeds run here from now on (`true`: a stand-alone broker started, or
    /// this broker became its cluster's primary), or stop.
    pub(super) fn run_feeds(&mut self, shard: &mut Shard, run: bool) {
        if self.feeds.running == run {
            return;
        }
        self.feeds.running = run;
        let names: Vec<Arc<str>> = if run {
            shard.catalogue.queues.keys().cloned().collect()
        } else {
            self.feeds.feeds.keys().cloned().collect()
        };
        // What a queue holds was replicated from the same remote before
        // (a restart, a promotion): the catch-up keeps it.
        for name in names {
            self.reconcile_feed(shard, &name, false);
        }
    }

    /// Timers: a stand-alone broker's feeds start at the first poll (the
    /// recovered configuration is in the catalogue by then); a feed that
    /// failed tries again.
    pub(super) fn poll_feeds(&mut self, shard: &mut Shard, now: Instant) {
        if !self.settings.queue_replication || shard.id != Self::feed_home(shard) {
            return;
        }
        if !self.feeds.started {
            self.feeds.started = true;
            if !self.settings.cluster {
                self.run_feeds(shard, true);
            }
        }
        let due: Vec<Arc<str>> = self
            .feeds
            .feeds
            .values()
            .filter(|f| f.retry_at.is_some_and(|t| t <= now))
            .map(|f| f.queue.clone())
            .collect();
        for name in due {
            self.feed_connect(shard, &name);
        }
    }

    /// A configuration change applied here: a queue that became a replica
    /// (or stopped being one, or went) starts (or stops) its feed.
    pub(super) fn feed_config(&mut self, shard: &mut Shard, event: &ConfigEvent) {
        if !self.feeds.running || shard.id != Self::feed_home(shard) {
            return;
        }
        match event {
            ConfigEvent::QueueDeclared { name, .. } | ConfigEvent::QueueDeleted { name } => {
                self.reconcile_feed(shard, name, true)
            }
            _ => {}
        }
    }

    /// Makes `name`'s feed match its queue's `replica-of`. `changed`: the
    /// queue just became a replica (of this remote): what it holds is not
    /// the remote's (positions of two brokers name different messages), so
    /// its first attach says it holds nothing and the remote sends the
    /// queue whole (what was here is dropped).
    fn reconcile_feed(&mut self, shard: &mut Shard, name: &Arc<str>, changed: bool) {
        let wanted = self
            .feeds
            .running
            .then(|| shard.catalogue.queues.get(name))
            .flatten()
            .and_then(|e| e.settings.replica_of.as_deref())
            .and_then(|r| r.parse::<BrokerUrl>().ok());
        let current = self.feeds.feeds.get(name).map(|f| &f.remote);
        if current == wanted.as_ref() {
            return;
        }
        if self.feeds.feeds.contains_key(name) {
            self.stop_feed(shard, name);
        }
        let Some(remote) = wanted else {
            return;
        };
        let shown = remote.redacted();
        tracing::info!("HA: queue '{name}' replicates {shown}: connecting");
        self.feeds.feeds.insert(
            name.clone(),
            Feed {
                queue: name.clone(),
                remote,
                attempt: 0,
                next_address: 0,
                conn: None,
                link: None,
                retry_at: None,
                status: ReplicaStatus {
                    remote: shown,
                    phase: Phase::Connecting,
                    address: None,
                    error: None,
                    attempts: 0,
                    lag: 0,
                    received: 0,
                },
                distrust: changed,
                unapplied: HashMap::new(),
                catch_up_ends: None,
                to_settle: Vec::new(),
            },
        );
        self.feed_connect(shard, name);
    }

    /// Stops a feed (its queue is an ordinary one now, or gone, or this
    /// broker is no longer its cluster's primary).
    fn stop_feed(&mut self, shard: &mut Shard, name: &Arc<str>) {
        let Some(feed) = self.feeds.feeds.remove(name) else {
            return;
        };
        if let Some(conn) = feed.conn {
            shard.conn_close(
                conn,
                ErrorCondition::new(condition::CONNECTION_FORCED, "queue replication stopped"),
            );
        }
        self.feeds.batches.retain(|_, (q, _, _, _)| q != name);
        tracing::info!(
            "HA: queue '{name}' no longer replicates {}",
            feed.remote.redacted()
        );
        self.feeds.changed.push(name.clone());
    }

    /// Tries the feed's next address.
    fn feed_connect(&mut self, shard: &mut Shard, name: &Arc<str>) {
        self.feeds.next_attempt += 1;
        let attempt = self.feeds.next_attempt;
        let Some(feed) = self.feeds.feeds.get_mut(name) else {
            return;
        };
        let address = feed.remote.addrs[feed.next_address % feed.remote.addrs.len()].to_string();
        feed.attempt = attempt;
        feed.retry_at = None;
        feed.status.phase = Phase::Connecting;
        feed.status.attempts += 1;
        feed.status.address = Some(address.clone());
        // A remote that does not answer is reported within seconds, whatever
        // the heartbeat (120 s by default).
        let timeout = self
            .settings
            .heartbeat
            .clamp(Duration::from_secs(1), CONNECT_TIMEOUT);
        shard.request_connection(FEED_TOKEN + attempt, address, timeout);
        self.feeds.changed.push(name.clone());
    }

    fn feed_of_attempt(&mut self, attempt: u64) -> Option<&mut Feed> {
        self.feeds.feeds.values_mut().find(|f| f.attempt == attempt)
    }

    fn feed_of_conn(&mut self, conn: u64) -> Option<&mut Feed> {
        self.feeds.feeds.values_mut().find(|f| f.conn == Some(conn))
    }

    /// The engine of a feed's connection: an ordinary client of the remote
    /// (never `qpid.ha-backup`), with the credentials of `replica-of`, else
    /// the broker's `ha-username`.
    pub(super) fn feed_engine(
        &mut self,
        shard: &Shard,
        token: u64,
        address: &str,
    ) -> Option<Connection> {
        let s = self.settings.clone();
        let feed = self.feed_of_attempt(token - FEED_TOKEN)?;
        let remote = feed.remote.clone();
        // `ha-mechanism` goes with the `ha-*` credentials, not with a URL's.
        let (credentials, mechanism) = match &remote.user {
            Some(user) => {
                let password = remote.password.clone().unwrap_or_default();
                (Some((user.clone(), password)), None)
            }
            None => {
                let password = s.password.clone().unwrap_or_default();
                (
                    s.username.clone().map(|u| (u, password)),
                    s.mechanism.as_ref(),
                )
            }
        };
        let mechanism = mechanism.map(String::as_str);
        Some(self.link_engine(shard, address, None, credentials, mechanism))
    }

    /// A feed's connection runs as `conn`.
    pub(super) fn feed_opened(&mut self, token: u64, conn: u64) {
        if let Some(feed) = self.feed_of_attempt(token - FEED_TOKEN) {
            feed.conn = Some(conn);
        }
    }

    /// Connecting for a feed failed outright.
    pub(super) fn feed_connect_failed(&mut self, shard: &mut Shard, token: u64) {
        let Some(feed) = self.feed_of_attempt(token - FEED_TOKEN) else {
            return;
        };
        let name = feed.queue.clone();
        let address = feed.status.address.clone().unwrap_or_default();
        let why = format!("cannot connect to {address}");
        self.feed_lost(shard, &name, Some(why));
    }

    /// An event of a feed's connection.
    pub(super) fn feed_event(&mut self, shard: &mut Shard, conn: u64, event: EngineEvent) {
        let Some(feed) = self.feed_of_conn(conn) else {
            return;
        };
        let name = feed.queue.clone();
        match event {
            EngineEvent::Opened(_) => {
                if feed.distrust {
                    return self.feed_attach(shard, &name, None);
                }
                // What we hold of the queue, from its owner, goes in the attach.
                let attempt = feed.attempt;
                let origin = shard.id;
                let owner = shard.owner_of(&name);
                shard.send_ext(
                    owner,
                    msg(Msg::FeedHoldings {
                        origin,
                        attempt,
                        queue: name,
                    }),
                );
            }
            EngineEvent::Attached { attach, .. } => {
                if attach.source.is_none() {
                    return; // refused: the detach that follows says why
                }
                feed.status.phase = Phase::CatchUp;
                feed.status.error = None;
                let link = feed.link;
                let address = feed.status.address.clone().unwrap_or_default();
                tracing::info!("HA: queue '{name}' replica attached to {address}: catching up");
                if let (Some(engine), Some(link)) = (shard.engine(conn), link) {
                    engine.grant_credit(link, FEED_CREDIT, false);
                    shard.wrote_to(conn);
                }
                self.feeds.changed.push(name);
            }
            EngineEvent::Transfer {
                delivery_id,
                payload,
                link,
                ..
            } => self.feed_delivery(shard, &name, (link.channel, delivery_id), &payload),
            EngineEvent::Detached { error, .. } | EngineEvent::Closed { error, .. } => {
                let address = feed.status.address.clone().unwrap_or_default();
                let why = match error {
                    // A broker that does not replicate at all.
                    Some(e)
                        if e.condition == condition::NOT_FOUND
                            && e.description
                                .as_deref()
                                .is_some_and(|d| d.contains(super::NODE)) =>
                    {
                        format!("{address} does not serve queue replicas ({e}): start it with ha-queue-replication = yes")
                    }
                    Some(e) => format!("{address} refused: {e}"),
                    None => format!("{address} closed the connection"),
                };
                self.feed_lost(shard, &name, Some(why));
            }
            _ => {}
        }
    }

    /// The queue's owner said what it holds: attach, saying so.
    pub(super) fn feed_held(&mut self, shard: &mut Shard, attempt: u64, ranges: Vec<(u64, u64)>) {
        let Some(feed) = self.feed_of_attempt(attempt) else {
            return;
        };
        let name = feed.queue.clone();
        self.feed_attach(shard, &name, Some(ranges));
    }

    fn feed_attach(&mut self, shard: &mut Shard, name: &Arc<str>, held: Option<Vec<(u64, u64)>>) {
        let Some(feed) = self.feeds.feeds.get_mut(name) else {
            return;
        };
        let Some(conn) = feed.conn else {
            return;
        };
        let Some(engine) = shard.engine(conn) else {
            return;
        };
        let channel = engine.begin();
        let mut properties = vec![(
            Value::symbol("tandem.ha-queue"),
            Value::String(name.to_string()),
        )];
        if let Some(ranges) = held {
            let holdings = vec![(Value::String(name.to_string()), ranges_value(&ranges))];
            properties.push((Value::symbol("tandem.ha-holdings"), Value::Map(holdings)));
        }
        let attach = Attach::receiver(
            format!("ha-queue-replica-{name}"),
            super::backup::replication_source(),
        )
        .with_properties(Value::Map(properties));
        feed.link = engine.attach(channel, attach);
        shard.wrote_to(conn);
    }

    /// A feed's connection or link ended (or never came up): tried again at
    /// the next address shortly. Said once per distinct reason.
    fn feed_lost(&mut self, shard: &mut Shard, name: &Arc<str>, why: Option<String>) {
        let now = shard.now();
        let Some(feed) = self.feeds.feeds.get_mut(name) else {
            return;
        };
        if let Some(conn) = feed.conn.take() {
            shard.conn_close(
                conn,
                ErrorCondition::new(
                    condition::CONNECTION_FORCED,
                    "queue replication link closed",
                ),
            );
        }
        let remote = feed.remote.redacted();
        if feed.status.error != why {
            if let Some(why) = &why {
                tracing::warn!("HA: queue '{name}' replicating {remote}: {why}; trying again");
            }
        }
        feed.status.error = why;
        feed.link = None;
        feed.status.phase = Phase::Connecting;
        feed.unapplied.clear();
        feed.catch_up_ends = None;
        feed.to_settle.clear();
        feed.status.lag = 0;
        feed.next_address += 1;
        feed.retry_at = Some(now + RETRY);
        feed.attempt = 0;
        self.feeds.batches.retain(|_, (q, _, _, _)| q != name);
        self.feeds.changed.push(name.clone());
    }

    /// A delivery of a feed: its events applied in order on the queue's
    /// owner; settled once its messages are stored.
    fn feed_delivery(
        &mut self,
        shard: &mut Shard,
        name: &Arc<str>,
        delivery: (u16, u32),
        payload: &Bytes,
    ) {
        let events = match Event::decode_all(payload) {
            Ok(events) => events,
            Err(e) => {
                return self.feed_diverged(shard, name, format!("undecodable delivery: {e}"));
            }
        };
        if let Some(why) = events.iter().find_map(|e| foreign_event(e, name)) {
            return self.feed_diverged(shard, name, why);
        }
        let owner = shard.owner_of(name);
        let Some(feed) = self.feeds.feeds.get_mut(name) else {
            return;
        };
        let attempt = feed.attempt;
        let mut items = Vec::new();
        // The delivery itself is one part until all of it is handed on.
        let mut parts = 1;
        let batches = &mut self.feeds.batches;
        let mut send_items = |shard: &mut Shard, items: &mut Vec<ToStore>, feed: &mut Feed| {
            if items.is_empty() {
                return;
            }
            let count = items.len();
            let batch = super::send_to_owner(shard, owner, std::mem::take(items));
            batches.insert(batch, (name.clone(), attempt, delivery, count));
            feed.status.lag += count as u64;
            parts += 1;
        };
        for event in events {
            let queue = name.clone();
            match event {
                Event::Enqueue {
                    position, message, ..
                } => {
                    feed.status.received += 1;
                    items.push(ToStore {
                        queue,
                        position,
                        message,
                    });
                }
                Event::Dequeue { positions, .. } => {
                    send_items(shard, &mut items, feed);
                    shard.send_ext(owner, msg(Msg::Dequeue { queue, positions }));
                }
                Event::QueueReset { .. } => {
                    send_items(shard, &mut items, feed);
                    tracing::info!("HA: queue '{name}' replica: the remote sends it whole");
                    shard.send_ext(owner, msg(Msg::Purge { queue }));
                    feed.distrust = false;
                }
                Event::QueueSync { next, keep, .. } => {
                    send_items(shard, &mut items, feed);
                    shard.send_ext(owner, msg(Msg::Retain { queue, next, keep }));
                    feed.distrust = false;
                }
                // Where the catch-up ends: ready once this delivery is applied.
                Event::Sync { .. } => feed.catch_up_ends = Some(delivery),
                // (Refused above.)
                _ => {}
            }
        }
        send_items(shard, &mut items, feed);
        *feed.unapplied.entry(delivery).or_default() += parts;
        self.feed_part_applied(name, delivery);
        self.feed_top_up(shard, name);
    }

    /// What a feed received cannot be applied: this copy is not trusted,
    /// the link starts over and the remote sends the queue whole.
    fn feed_diverged(&mut self, shard: &mut Shard, name: &Arc<str>, why: String) {
        tracing::error!("HA: queue '{name}' replica: {why}; starting over from a full copy");
        if let Some(feed) = self.feeds.feeds.get_mut(name) {
            feed.distrust = true;
        }
        self.feed_lost(shard, name, Some(why));
    }

    /// One part of a feed's delivery is applied; the last settles it.
    fn feed_part_applied(&mut self, name: &Arc<str>, delivery: (u16, u32)) {
        let Some(feed) = self.feeds.feeds.get_mut(name) else {
            return;
        };
        let Some(left) = feed.unapplied.get_mut(&delivery) else {
            return;
        };
        *left -= 1;
        if *left > 0 {
            return;
        }
        feed.unapplied.remove(&delivery);
        feed.to_settle.push(delivery);
        if feed.catch_up_ends == Some(delivery) {
            feed.catch_up_ends = None;
            feed.status.phase = Phase::Ready;
            let address = feed.status.address.clone().unwrap_or_default();
            tracing::info!("HA: queue '{name}' replica of {address} is ready");
        }
        self.feeds.changed.push(name.clone());
    }

    /// Whether `batch` is a feed's; then `stored` of its messages are
    /// stored (or the queue is missing, and the feed starts over).
    pub(super) fn feed_batch_applied(
        &mut self,
        shard: &mut Shard,
        batch: u64,
        stored: usize,
        missing: bool,
    ) -> bool {
        let Some((name, attempt, delivery, left)) = self.feeds.batches.get_mut(&batch) else {
            return false;
        };
        let (name, attempt, delivery) = (name.clone(), *attempt, *delivery);
        if missing {
            self.feeds.batches.remove(&batch);
            let why = "the queue is missing on its owner shard".to_string();
            self.feed_diverged(shard, &name, why);
            return true;
        }
        *left = left.saturating_sub(stored);
        let done = *left == 0;
        if done {
            self.feeds.batches.remove(&batch);
        }
        if let Some(feed) = self
            .feeds
            .feeds
            .get_mut(&name)
            .filter(|f| f.attempt == attempt)
        {
            feed.status.lag = feed.status.lag.saturating_sub(stored as u64);
            if done {
                self.feed_part_applied(&name, delivery);
            }
        }
        true
    }

    pub(super) fn is_feed_batch(&self, token: u64) -> bool {
        self.feeds.batches.contains_key(&token)
    }

    /// A message of a feed's batch was refused after all and removed here
    /// (`ha-min-backups-timeout` on a cluster's primary): its delivery is
    /// never settled; the link starts over, and the catch-up sends it again.
    pub(super) fn feed_batch_rejected(
        &mut self,
        shard: &mut Shard,
        token: u64,
        why: &ErrorCondition,
    ) {
        let Some((name, _, _, _)) = self.feeds.batches.remove(&token) else {
            return;
        };
        let why = format!("a replicated message was not kept ({why}); catching up again");
        self.feed_lost(shard, &name, Some(why));
    }

    fn feed_top_up(&mut self, shard: &mut Shard, name: &Arc<str>) {
        let Some(feed) = self.feeds.feeds.get(name) else {
            return;
        };
        let (Some(conn), Some(link)) = (feed.conn, feed.link) else {
            return;
        };
        if let Some(engine) = shard.engine(conn) {
            if engine.credit(link) < FEED_CREDIT / 2 {
                engine.grant_credit(link, FEED_CREDIT, false);
                shard.wrote_to(conn);
            }
        }
    }

    /// End of a step: settle what the feeds applied, and tell shard 0 what
    /// changed.
    pub(super) fn flush_feeds(&mut self, shard: &mut Shard) {
        for feed in self.feeds.feeds.values_mut() {
            if feed.to_settle.is_empty() {
                continue;
            }
            let Some(conn) = feed.conn else {
                feed.to_settle.clear();
                continue;
            };
            if let Some(engine) = shard.engine(conn) {
                accept_in_ranges(engine, &mut feed.to_settle);
                shard.wrote_to(conn);
            }
            feed.to_settle.clear();
        }
        if self.feeds.changed.is_empty() {
            return;
        }
        let mut changed = std::mem::take(&mut self.feeds.changed);
        changed.sort();
        changed.dedup();
        for queue in changed {
            let status = self.feeds.feeds.get(&queue).map(|f| f.status.clone());
            // Every shard answers management.
            for to in 0..shard.workers() {
                let status = status.clone();
                let queue = queue.clone();
                shard.send_ext(to, msg(Msg::FeedStatus { queue, status }));
            }
        }
    }

    /// A feed's status, for its queue's management row.
    pub(super) fn feed_status(&mut self, queue: Arc<str>, status: Option<ReplicaStatus>) {
        match status {
            Some(s) => {
                self.feeds.shown.insert(queue, s);
            }
            None => {
                self.feeds.shown.remove(&queue);
            }
        }
    }

    /// The replica attributes of a queue's management row.
    /// Every queue's row has them (null for an ordinary queue), so that
    /// rows have the same columns.
    pub(super) fn replica_attributes(
        &self,
        shard: &Shard,
        queue: &str,
    ) -> Vec<(&'static str, Value)> {
        const NAMES: [&str; 6] = [
            "replica-state",
            "replica-address",
            "replica-error",
            "replica-attempts",
            "replica-lag",
            "replica-received",
        ];
        if !self.settings.queue_replication {
            return Vec::new();
        }
        let configured = shard
            .catalogue
            .queues
            .get(queue)
            .and_then(|e| e.settings.replica_of.as_deref())
            .map(tandem_shards::url::redacted_text);
        let shown = self.feeds.shown.get(queue);
        let Some(s) = shown.filter(|s| configured.as_ref() == Some(&s.remote)) else {
            return NAMES.iter().map(|n| (*n, Value::Null)).collect();
        };
        let text = |v: &Option<String>| v.as_deref().map(Value::string).unwrap_or(Value::Null);
        let values = [
            Value::string(s.phase.as_str()),
            text(&s.address),
            text(&s.error),
            Value::Ulong(s.attempts),
            Value::Ulong(s.lag),
            Value::Ulong(s.received),
        ];
        NAMES.into_iter().zip(values).collect()
    }
}

/// Why an event does not belong on the replica link of queue `name`, if it
/// does not: another queue's, or a whole broker's stream (configuration,
/// membership).
fn foreign_event(event: &Event, name: &str) -> Option<String> {
    let other = |what: &str, queue: &str| {
        (queue != name).then(|| {
            format!(
                "{what} for queue '{}' on the replica link of '{name}'",
                tandem_shards::shown::shown(queue)
            )
        })
    };
    match event {
        Event::Enqueue { queue, .. } => other("enq", queue),
        Event::Dequeue { queue, .. } => other("deq", queue),
        Event::QueueReset { name: queue, .. } | Event::QueueSync { name: queue, .. } => {
            other("a catch-up", queue)
        }
        Event::Sync { .. } => None,
        _ => Some(format!(
            "an event of a whole broker's stream on the replica link of '{name}'"
        )),
    }
}
