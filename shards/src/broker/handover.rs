//! Handing a connection over to another shard: the shard gives up the
//! connection's state (its engine, with the events and output it has not
//! handled yet, and what the shard knows of it) as one `Send` value; the
//! runtime adds the socket (a duplicate of its descriptor for the journey) and
//! the bytes read but not yet consumed, and the ring carries all of it to the
//! new shard, which adopts the connection under a new id.
//!
//! Used for claimed links whose extension serves them on a home shard
//! ([`super::ext::Extension::home`]); connection placement can use it too.

use bytes::BytesMut;

use super::{Shard, ShardMsg};
use crate::amqp::connection::{Connection, Event};

/// A connection on its way to another shard.
pub struct Handover {
    engine: Connection,
    peer: String,
    user: Option<String>,
    container: String,
    opened: bool,
    admin: bool,
    /// Events taken from the engine but not handled yet, handled first there.
    pending: Vec<Event>,
}

/// What the runtime sends with a handover: the socket and the unread bytes.
pub struct Arrival {
    pub handover: Handover,
    /// The socket's descriptor, owned by the arrival until adopted.
    pub fd: i32,
    /// Bytes read from the socket that the engine has not consumed.
    pub leftover: BytesMut,
    /// How the socket's bytes are carried (a TLS session goes along).
    pub transport: crate::transport::Transport,
}

/// A connection this shard adopted, for the runtime to serve: its id, socket,
/// unread bytes and transport.
pub struct Adopted {
    pub id: u64,
    pub fd: i32,
    pub leftover: BytesMut,
    pub transport: crate::transport::Transport,
}

impl Shard {
    /// Gives connection `conn` up to shard `to`, `pending` its events still
    /// to handle there; `false` (and nothing done) if it cannot move.
    pub(super) fn hand_over(&mut self, conn: u64, to: usize, pending: Vec<Event>) -> bool {
        if !self.can_hand_over(conn, to) {
            return false;
        }
        let Some(c) = self.conns.remove(&conn) else {
            return false;
        };
        self.dirty.retain(|d| *d != conn);
        tracing::debug!(shard = self.id, conn, to, peer = %c.peer, "handing the connection over");
        let handover = Handover {
            engine: c.engine,
            peer: c.peer,
            user: c.user,
            container: c.container,
            opened: c.opened,
            admin: c.admin,
            pending,
        };
        self.leaving.push((conn, to, handover));
        true
    }

    /// Whether connection `conn` can move to shard `to`: one with no links of
    /// its own (their state names this shard), and not one the extension owns.
    pub(super) fn can_hand_over(&self, conn: u64, to: usize) -> bool {
        to != self.id
            && to < self.shards()
            && self
                .conns
                .get(&conn)
                .is_some_and(|c| c.links.is_empty() && c.out.is_empty() && !c.owned)
    }

    /// The runtime: connection `conn` left for another shard; where to, and
    /// its state (the runtime adds the socket and sends it on).
    pub fn take_leaving(&mut self, conn: u64) -> Option<(usize, Handover)> {
        let i = self.leaving.iter().position(|(c, _, _)| *c == conn)?;
        let (_, to, handover) = self.leaving.swap_remove(i);
        Some((to, handover))
    }

    /// Sends an arrival to shard `to` (the runtime, after it added the socket).
    pub fn send_arrival(&mut self, to: usize, arrival: Arrival) {
        self.send(to, ShardMsg::Arrival(Box::new(arrival)));
    }

    /// A connection handed over by another shard: adopt it under a new id,
    /// handle what it had pending, and leave its socket for the runtime.
    pub(super) fn adopt(&mut self, arrival: Arrival) {
        let Arrival {
            handover,
            fd,
            leftover,
            transport,
        } = arrival;
        let mut leftover = leftover;
        let id = self.add_connection(handover.engine, handover.peer);
        if let Some(c) = self.conns.get_mut(&id) {
            c.user = handover.user;
            c.container = handover.container;
            c.opened = handover.opened;
            c.admin = handover.admin;
        }
        for event in handover.pending {
            self.on_event(id, event);
        }
        self.conn_events(id);
        // The bytes that came after the frames handled so far.
        if !leftover.is_empty() {
            let now = self.now;
            self.conn_input(id, &mut leftover, now);
        }
        self.arrivals.push(Adopted {
            id,
            fd,
            leftover,
            transport,
        });
    }

    /// The runtime: adopted connections whose sockets it must serve now, as
    /// `(connection id, descriptor, unread bytes)`.
    pub fn take_arrivals(&mut self) -> Vec<Adopted> {
        std::mem::take(&mut self.arrivals)
    }
}

// A handover crosses threads on a ring.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Arrival>();
};

impl std::fmt::Debug for Arrival {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arrival")
            .field("peer", &self.handover.peer)
            .field("fd", &self.fd)
            .field("leftover", &self.leftover.len())
            .finish()
    }
}
