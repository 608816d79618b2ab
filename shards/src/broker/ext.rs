//! The extension seam: how a module that `tandem-shards` knows nothing about
//! (HA replication today, the store next) plugs into every shard. An
//! [`Extension`] gets:
//!
//! - a **change tap**: what happened to the queues it taps (stored at a
//!   position, dequeued), and every configuration change as each shard applies
//!   it and as the ordering point commits it, in one order per shard;
//! - **settlement holders**: it may hold the settlement of every publish to a
//!   queue from a position on, and releases positions cumulatively
//!   ([`Shard::hold`], [`Shard::release`]); a publish settles once every
//!   holder released it (or a consumer took and accepted it);
//! - **claimed links**: attaches to the addresses it claims, and the events of
//!   those links;
//! - **owned connections**: connections it asked the runtime to open, whose
//!   every event it handles;
//! - **extension messages** ([`ExtMsg`]) on the rings between shards;
//! - **management**: the entity types it answers, on shard 0;
//! - **timers**: `poll` from the shard's housekeeping, with the shard's clock.
//!
//! The shard calls its extension only at the top of an input (never while the
//! extension itself is running): tap events raised meanwhile wait in a buffer
//! and are delivered right after.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::config::ConfigEvent;
use super::{Shard, ShardMsg};
use crate::amqp::codec::Value;
use crate::amqp::connection::{Connection, Event, LinkKey};
use crate::amqp::performative::{Attach, ErrorCondition};
use crate::management::{Request, Response};

/// A message between two shards' extensions (downcast by the extension).
pub type ExtMsg = Box<dyn Any + Send>;

/// A call to the extension that waits until the running one returns.
pub(super) type Deferred = Box<dyn FnOnce(&mut dyn Extension, &mut Shard)>;

/// One change seen by the tap.
#[derive(Debug)]
pub enum Tap {
    /// A tapped queue stored a message at `position` (on its owner).
    Stored {
        queue: Arc<str>,
        position: u64,
        message: Bytes,
    },
    /// Messages left a tapped queue (consumed, expired, dropped by a ring).
    Dequeued {
        queue: Arc<str>,
        positions: Vec<u64>,
    },
    /// Deliveries of a tapped queue's messages failed: each position's new
    /// delivery count.
    Redelivered {
        queue: Arc<str>,
        counts: Vec<(u64, u32)>,
    },
    /// This shard applied a configuration change.
    Applied(ConfigEvent),
    /// Shard 0: the ordering point ordered these changes; they reach every
    /// shard before anything the extension sends it after hearing this.
    Ordered(Vec<ConfigEvent>),
}

/// What a shard's extension does. Every method has a do-nothing default.
#[allow(unused_variables)]
pub trait Extension {
    /// Whether management requests for `entity_type` are the extension's (they
    /// are answered on shard 0).
    fn manages(&self, entity_type: &str) -> bool {
        false
    }

    /// Shard 0: answers a management request of an entity type it manages.
    fn manage(&mut self, shard: &mut Shard, request: Request) -> Response {
        Response::error(
            crate::management::status::NOT_FOUND,
            format!("no such entity type: {}", request.entity_type),
        )
    }

    /// Whether a connection whose open carried `properties` is an admin one
    /// (admitted while the broker admits admin connections only).
    fn is_admin(&self, properties: Option<&Value>) -> bool {
        false
    }

    /// Whether attaches to `address` are the extension's.
    fn claims(&self, address: &str) -> bool {
        false
    }

    /// The shard that serves claimed links, if one does: a connection that
    /// attaches a claimed address on another shard moves there first
    /// ([`super::handover`]). `None`: served wherever they arrive.
    fn home(&self, shard: &Shard) -> Option<usize> {
        None
    }

    /// A peer attached a link to a claimed address on connection `conn`: the
    /// extension answers it (`Shard::engine`) now or later.
    fn attach(&mut self, shard: &mut Shard, conn: u64, link: LinkKey, attach: Attach) {}

    /// An event of a claimed link (credit, detach) or of a connection hosting
    /// claimed links (dispositions, which the shard also handles itself).
    fn link_event(&mut self, shard: &mut Shard, conn: u64, event: &Event) {}

    /// Any event of a connection the extension owns.
    fn owned_event(&mut self, shard: &mut Shard, conn: u64, event: Event) {}

    /// Bytes arrived on a connection that the extension owns or that hosts
    /// claimed links (heartbeats count).
    fn heard(&mut self, shard: &mut Shard, conn: u64, now: Instant) {}

    /// The runtime connected the socket the extension asked for with
    /// [`Shard::request_connection`]: the engine to run on it (`None` drops it).
    fn connected(&mut self, shard: &mut Shard, token: u64, address: &str) -> Option<Connection> {
        None
    }

    /// The engine [`Extension::connected`] gave runs as connection `conn`.
    fn opened(&mut self, shard: &mut Shard, token: u64, conn: u64) {}

    /// The runtime could not connect the socket asked for.
    fn connect_failed(&mut self, shard: &mut Shard, token: u64) {}

    /// A message from another shard's extension (or this one's).
    fn message(&mut self, shard: &mut Shard, message: ExtMsg) {}

    /// A change the tap saw.
    fn tap(&mut self, shard: &mut Shard, tap: Tap) {}

    /// Timers; called from housekeeping and after management operations.
    fn poll(&mut self, shard: &mut Shard, now: Instant) {}

    /// End of a step: write what the step batched.
    fn end_of_step(&mut self, shard: &mut Shard) {}

    /// A store below this extension (wrapping it) stopped being able to
    /// write (`Some(why)`: what this shard stores waits), or can again
    /// (`None`). A backup must not acknowledge what it cannot keep.
    fn store_failing(&mut self, shard: &mut Shard, why: Option<&str>) {}

    /// On the queue's owner, before a message is stored: an error refuses it
    /// (the publisher is told), e.g. a store that cannot write.
    fn refuse_store(
        &self,
        queue: &str,
        message: &Bytes,
    ) -> Option<crate::amqp::performative::ErrorCondition> {
        None
    }

    /// A message stored with [`Shard::store_at`] under `token` was released
    /// by every settlement holder, or (`rejected`) refused after all and
    /// removed (e.g. `ha-min-backups-timeout`).
    fn acked(&mut self, shard: &mut Shard, token: u64, rejected: Option<&ErrorCondition>) {}

    /// Attributes of queue `name` for its management row, beyond the
    /// shard's own (e.g. the state of a queue replica).
    fn queue_attributes(&self, shard: &Shard, name: &str) -> Vec<(&'static str, Value)> {
        Vec::new()
    }

    /// The node an attach to a claimed address is checked against by the
    /// access policy, if not the address itself (a queue replica's link is
    /// a consumer of the queue it copies).
    fn access_node<'a>(&self, attach: &'a Attach) -> Option<&'a str> {
        None
    }

    /// Counters for the broker's management attributes (summed over the
    /// shards), e.g. `store-journal-writes`.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// Facts about the broker for the stats handle (its HA status and
    /// epoch, say), from the shard that knows them; metrics read them.
    fn facts(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Labelled gauges for the stats handle, as of `now` (the shard's clock).
    fn series(&self, now: Instant) -> Vec<crate::stats::Series> {
        Vec::new()
    }

    /// Once, when installed on its shard (before any input): recover state,
    /// tap queues, hold settlements.
    fn start(&mut self, shard: &mut Shard) {}

    /// The disk operation asked for with [`Shard::disk`] as `token` ended.
    fn disk_done(&mut self, shard: &mut Shard, token: u64, result: crate::disk::DiskResult) {}

    /// The configuration change asked for with [`Shard::request_config`] as
    /// `req` is applied on every shard (or was refused).
    fn config_done(
        &mut self,
        shard: &mut Shard,
        req: u64,
        result: Result<super::ConfigDone, crate::amqp::performative::ErrorCondition>,
    ) {
    }
}

impl Shard {
    /// Installs this shard's extension.
    pub fn set_extension(&mut self, ext: Box<dyn Extension>) {
        self.ext = Some(ext);
        self.ext_installed = true;
        self.with_ext(|ext, shard| ext.start(shard));
    }

    /// Runs `f` with the extension taken out of the shard (so that it may call
    /// back into the shard), then what it caused: calls deferred meanwhile,
    /// and the tap events raised. Called while the extension runs (a shard
    /// method it called raised an event for it), `f` waits until it returns.
    pub(super) fn with_ext(&mut self, f: impl FnOnce(&mut dyn Extension, &mut Shard) + 'static) {
        if !self.ext_installed {
            return;
        }
        if self.ext.is_none() {
            self.deferred.push_back(Box::new(f));
            return;
        }
        self.with_ext_now(f);
    }

    /// Like [`Self::with_ext`] for a call whose result the caller needs: only
    /// from the top of an input (never while the extension runs).
    pub(super) fn with_ext_now(&mut self, f: impl FnOnce(&mut dyn Extension, &mut Shard)) {
        let Some(mut ext) = self.ext.take() else {
            return;
        };
        f(ext.as_mut(), self);
        self.run_deferred(ext.as_mut());
        self.ext = Some(ext);
        self.deliver_taps();
    }

    /// The calls made for the extension while it ran, in order.
    fn run_deferred(&mut self, ext: &mut dyn Extension) {
        while let Some(next) = self.deferred.pop_front() {
            next(ext, self);
        }
    }

    /// Delivers buffered tap events, including those they raise.
    pub(super) fn deliver_taps(&mut self) {
        while !self.taps.is_empty() {
            // While the extension runs, its taps wait until it returns.
            let Some(mut ext) = self.ext.take() else {
                return;
            };
            // Keep the buffer's allocation: a tapped queue raises an event per
            // message.
            let mut taps = std::mem::take(&mut self.taps);
            for tap in taps.drain(..) {
                ext.tap(self, tap);
                self.run_deferred(ext.as_mut());
            }
            if self.taps.is_empty() {
                self.taps = taps;
            }
            self.ext = Some(ext);
        }
    }

    /// Raises a tap event (delivered at the end of the current input).
    pub(super) fn raise(&mut self, tap: Tap) {
        if self.ext_installed {
            self.taps.push(tap);
        }
    }

    /// Sends a message to shard `to`'s extension.
    pub fn send_ext(&mut self, to: usize, message: ExtMsg) {
        self.send(to, ShardMsg::Ext(message));
    }

    /// The engine of connection `conn` (mark it dirty after writing).
    pub fn engine(&mut self, conn: u64) -> Option<&mut Connection> {
        self.conns.get_mut(&conn).map(|c| &mut c.engine)
    }

    /// A connection has output to write.
    pub fn wrote_to(&mut self, conn: u64) {
        self.mark_dirty(conn);
    }

    /// Asks the runtime to open a connection to `address`, giving up after
    /// `timeout`; the extension hears of it under `token`
    /// ([`Extension::connected`] or `connect_failed`).
    pub fn request_connection(&mut self, token: u64, address: String, timeout: Duration) {
        self.connects.push((token, address, timeout));
    }

    /// Asks the runtime to perform a disk operation; the extension hears how
    /// it ended under the returned token ([`Extension::disk_done`]).
    pub fn disk(&mut self, op: crate::disk::DiskOp) -> u64 {
        let token = self.next_disk;
        self.next_disk += 1;
        self.disk_ops.push((token, op));
        token
    }

    /// Disk operations the runtime should perform, in the order asked.
    pub fn take_disk_ops(&mut self) -> Vec<(u64, crate::disk::DiskOp)> {
        std::mem::take(&mut self.disk_ops)
    }

    /// The runtime finished the disk operation `token`.
    pub fn disk_done(&mut self, token: u64, result: crate::disk::DiskResult) {
        self.with_ext(move |ext, shard| ext.disk_done(shard, token, result));
    }

    /// Connections the runtime should open: `(token, address, timeout)`.
    pub fn take_connection_requests(&mut self) -> Vec<(u64, String, Duration)> {
        std::mem::take(&mut self.connects)
    }

    /// The runtime connected a socket asked for under `token`: the extension's
    /// engine runs on it as an owned, admin connection; its id, or `None`.
    pub fn connection_opened(&mut self, token: u64, address: String) -> Option<u64> {
        let mut engine = None;
        self.with_ext_now(|ext, shard| engine = ext.connected(shard, token, &address));
        let id = self.add_connection(engine?, address);
        if let Some(c) = self.conns.get_mut(&id) {
            c.admin = true;
            c.owned = true;
        }
        self.with_ext(move |ext, shard| ext.opened(shard, token, id));
        Some(id)
    }

    /// The runtime could not connect the socket asked for under `token`.
    pub fn connection_failed(&mut self, token: u64) {
        self.with_ext(move |ext, shard| ext.connect_failed(shard, token));
    }

    /// Lets the extension run its timers.
    pub fn poll_extension(&mut self, now: Instant) {
        self.set_now(now);
        self.with_ext(move |ext, shard| ext.poll(shard, now));
    }

    /// Whether connection `conn` is an admin connection.
    pub fn is_admin_connection(&self, conn: u64) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.admin)
    }

    /// Marks `link` of `conn` as claimed: its credit and detach go to the
    /// extension, and the connection's dispositions too.
    pub fn claim_link(&mut self, conn: u64, link: LinkKey) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.claimed.insert(link);
        }
    }

    /// A claimed link is gone.
    pub fn release_link(&mut self, conn: u64, link: LinkKey) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.claimed.remove(&link);
        }
    }

    // -----------------------------------------------------------------------
    // Queues

    /// The queue `name` if this shard owns it.
    pub fn queue(&self, name: &str) -> Option<&crate::queue::Queue> {
        self.queues.get(name)
    }

    pub fn queue_mut(&mut self, name: &str) -> Option<&mut crate::queue::Queue> {
        self.queues.get_mut(name)
    }

    /// Names of the queues this shard owns.
    pub fn queue_names(&self) -> Vec<Arc<str>> {
        self.queues.keys().cloned().collect()
    }

    /// Taps an owned queue: from now on its stores and dequeues are reported.
    pub fn tap_queue(&mut self, name: &str) {
        if let Some(q) = self.queues.get_mut(name) {
            q.track_dequeues(true);
            self.tapped.insert(name.into());
        }
    }

    /// Publishes to owned queue `name` from its next position on wait for
    /// `holder` too; that position. (A holder already holding it keeps its
    /// first position.)
    pub fn hold(&mut self, name: &Arc<str>, holder: u64) -> Option<u64> {
        let next = self.queues.get_mut(&**name).map(|q| {
            q.track_dequeues(true);
            q.next_position()
        })?;
        self.holds.hold(name, holder, next);
        Some(next)
    }

    /// Every publish to owned queue `name` whose settlement is held now, and
    /// every one from now on, waits for `holder` too (a hold that keeps what
    /// other holders held when they go), even once consumed: nothing of the
    /// queue settles until `holder` releases or goes. Whether the queue is
    /// owned here.
    pub fn hold_held(&mut self, name: &Arc<str>, holder: u64) -> bool {
        let Some(q) = self.queues.get_mut(&**name) else {
            return false;
        };
        q.track_dequeues(true);
        self.holds.hold_all(name, holder);
        true
    }

    /// Positions of owned queue `queue` whose publishers' settlements are held.
    pub fn held_positions(&self, queue: &str) -> Vec<u64> {
        self.holds.held_positions(queue)
    }

    /// Whether `holder` holds owned queue `queue`.
    pub fn holds(&self, holder: u64, queue: &str) -> bool {
        self.holds.holds(holder, queue)
    }

    /// Refuses the held publish at `position` of `queue` with `error`: its
    /// publisher hears the rejection, and a message still waiting on the
    /// queue leaves it (the tap is told). One a consumer took stays with the
    /// consumer (the publisher, told it was not settled, may send it again).
    /// Whether it was refused.
    pub fn reject_held(&mut self, queue: &str, position: u64, error: ErrorCondition) -> bool {
        let Some((name, q)) = self.queues.get_key_value_mut(queue) else {
            return false;
        };
        let name = name.clone();
        let waiting = q.is_available(position);
        let Some(held) = self.holds.take(&name, position) else {
            return false;
        };
        if waiting {
            q.remove_available(position);
            self.messages_left(&name);
        }
        self.refuse_publish(Some(held.ack), error);
        true
    }

    /// `holder` holds nothing any more, and what waited only for it is
    /// forgotten, not settled: this broker stopped being the one whose
    /// settlements count (its publishers are being disconnected, and send
    /// again elsewhere).
    pub fn abandon_holder(&mut self, holder: u64) {
        let mut forgotten = Vec::new();
        self.holds.drop_holder(holder, &mut forgotten);
        if !forgotten.is_empty() {
            tracing::warn!(
                "{} publishes are left unsettled: their settlement no longer counts here",
                forgotten.len()
            );
        }
    }

    /// Stores a replica of another broker's message at `position` of owned
    /// queue `queue`, as a publish is stored: the tap is told and the
    /// settlement holders asked. `Some(true)`: nothing holds it; `Some(false)`:
    /// held, and once every holder released it the shard `ack` names hears
    /// `Extension::acked(ack.token)`; `None`: no such queue.
    pub fn store_at(
        &mut self,
        queue: &str,
        position: u64,
        message: Bytes,
        ack: crate::queue::AckTo,
    ) -> Option<bool> {
        let (name, q) = self.queues.get_key_value_mut(queue)?;
        let name = name.clone();
        // A position held already is that message (one position names one
        // message): nothing new to report or wait for, so replicas that
        // feed each other in a cycle come to rest.
        if !q.insert_at(position, message.clone()) {
            return Some(true);
        }
        if self.tapped.contains(&name) {
            self.raise(Tap::Stored {
                queue: name.clone(),
                position,
                message,
            });
        }
        let since = self.now;
        let held = super::Held { ack, since };
        Some(self.holds.enqueued(&name, position, held).is_some())
    }

    /// Removes a replica's messages the other broker dequeued, as
    /// consumption would (the tap is told).
    pub fn remove_at(&mut self, queue: &str, positions: &[u64]) {
        let Some((name, q)) = self.queues.get_key_value_mut(queue) else {
            return;
        };
        let name = name.clone();
        for &p in positions {
            q.remove_at(p);
        }
        self.messages_left(&name);
    }

    /// Drops every message of an owned queue (a replica about to be sent
    /// again whole); the tap is told.
    pub fn purge(&mut self, queue: &str) {
        let Some((name, q)) = self.queues.get_key_value_mut(queue) else {
            return;
        };
        let name = name.clone();
        q.purge();
        self.messages_left(&name);
    }

    /// Every owned queue, and every queue declared here from now on, gives
    /// messages positions from `floor` on. A broker promoted at epoch `e`
    /// raises it to a floor of its own, so that a position names one message
    /// across the cluster's history: no other primary assigned it.
    pub fn raise_position_floor(&mut self, floor: u64) {
        self.position_floor = self.position_floor.max(floor);
        for q in self.queues.values_mut() {
            q.raise_next_position(floor);
        }
    }

    /// Positions of owned queue `queue`'s messages (available or acquired),
    /// as ranges of consecutive positions, in order.
    pub fn position_ranges(&self, queue: &str) -> Vec<(u64, u64)> {
        self.queues
            .get(queue)
            .map(|q| crate::ranges::from_sorted(q.positions()))
            .unwrap_or_default()
    }

    /// A token for [`Shard::store_at`] that no publish of this shard uses.
    pub fn new_ack_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    /// `holder` releases every position of `queue` up to `upto`.
    pub fn release(&mut self, queue: &str, holder: u64, upto: u64) {
        let mut released = Vec::new();
        self.holds.release(queue, holder, upto, &mut released);
        for held in released {
            self.settle_held(held);
        }
    }

    /// `holder` holds nothing any more, on any queue.
    pub fn drop_holder(&mut self, holder: u64) {
        let mut released = Vec::new();
        self.holds.drop_holder(holder, &mut released);
        for held in released {
            self.settle_held(held);
        }
    }

    /// Whether `holder` released `queue` up to `position`.
    pub fn released(&self, holder: u64, queue: &str, position: u64) -> bool {
        self.holds.released(holder, queue, position)
    }

    /// Asks the ordering point (shard 0) to apply a configuration change; the
    /// extension hears the result under the returned id
    /// ([`Extension::config_done`]) once every shard applied it.
    pub fn request_config(&mut self, op: super::ConfigOp) -> u64 {
        let req = self.next_req;
        self.next_req += 1;
        self.requests.insert(req, super::conn::Waiting::Extension);
        let origin = self.id;
        self.send(0, ShardMsg::ConfigRequest { origin, req, op });
        req
    }
}
