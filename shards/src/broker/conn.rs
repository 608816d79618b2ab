//! What the shard keeps per connection and link: the connection record, each
//! link's role, publishes waiting for their queues, deliveries waiting for the
//! client, and requests waiting for shard 0. The files that handle
//! connections (`link.rs`, `publish.rs`, `consume.rs`, `mgmt.rs`) share these
//! types; none of them imports another.

use std::collections::VecDeque;

use hashbrown::{HashMap, HashSet};
use std::sync::Arc;

use crate::amqp::codec::Value;
use crate::amqp::connection::{Connection, LinkKey};
use crate::amqp::performative::{condition, Attach, ErrorCondition};
use crate::queue::Delivery;

/// Where a management reply goes.
#[derive(Debug, Clone)]
pub struct ReplyTo {
    pub(super) address: String,
    pub(super) correlation: Option<Value>,
}

/// Where a publishing link's messages go.
#[derive(Debug, Clone)]
pub(super) enum Dest {
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

pub(super) enum LinkRole {
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
    Management(ReplyTo),
    /// The extension's ([`super::Shard::request_config`]).
    Extension,
}

/// A publish waiting for its queues' acks.
pub(super) struct PendingAck {
    pub(super) conn: u64,
    pub(super) link: LinkKey,
    pub(super) delivery_id: u32,
    /// The client sent it pre-settled: only credit is replenished.
    pub(super) presettled: bool,
    pub(super) remaining: u32,
    pub(super) rejected: Option<ErrorCondition>,
}

/// A delivery to a client, until the client settles it.
pub(super) struct OutDelivery {
    pub(super) link: LinkKey,
    pub(super) queue: Arc<str>,
    pub(super) owner: usize,
    pub(super) position: u64,
}

pub(super) struct Conn {
    pub(super) engine: Connection,
    pub(super) peer: String,
    pub(super) user: Option<String>,
    pub(super) container: String,
    /// The peer's open arrived.
    pub(super) opened: bool,
    /// An admin connection (`qpid.ha-admin`) or another broker's link.
    pub(super) admin: bool,
    /// A connection the extension opened and drives: its events go there.
    pub(super) owned: bool,
    /// Links the extension claimed ([`super::ext`]).
    pub(super) claimed: HashSet<LinkKey>,
    pub(super) messages_in: u64,
    pub(super) messages_out: u64,
    /// AMQP bytes (after TLS) the engine consumed and produced.
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) links: HashMap<LinkKey, LinkRole>,
    /// Unsettled deliveries we sent, by (channel, delivery id).
    pub(super) out: HashMap<(u16, u32), OutDelivery>,
    /// Publishes to settle as accepted at the end of this step, by (channel, id).
    pub(super) accepted: Vec<(u16, u32)>,
    /// When the connection was accepted (its handshake must end in time).
    pub(super) since: std::time::Instant,
    /// It came over TLS.
    pub(super) encrypted: bool,
}

impl Conn {
    /// What the connection moved so far.
    pub(super) fn moved(&self) -> crate::stats::ConnectionTotals {
        let (frames_in, frames_out) = self.engine.frame_counts();
        crate::stats::ConnectionTotals {
            frames_in,
            frames_out,
            messages_in: self.messages_in,
            messages_out: self.messages_out,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
        }
    }

    pub(super) fn new(engine: Connection, peer: String, since: std::time::Instant) -> Conn {
        Conn {
            engine,
            peer,
            user: None,
            container: String::new(),
            opened: false,
            admin: false,
            owned: false,
            claimed: HashSet::new(),
            messages_in: 0,
            messages_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            links: HashMap::new(),
            out: HashMap::new(),
            accepted: Vec::new(),
            since,
            encrypted: false,
        }
    }

    /// Accepted from a client and not opened yet: still in its protocol
    /// header, SASL or open.
    pub(super) fn handshaking(&self) -> bool {
        !self.opened && !self.owned && !self.engine.is_closed()
    }
}

pub(super) fn not_found(what: &str) -> ErrorCondition {
    ErrorCondition::new(condition::NOT_FOUND, format!("node '{what}' not found"))
}
