//! The seams the HA module plugs into, so that `tandem-shards` knows nothing of
//! HA: who may connect ([`Admission`]), and a handler on shard 0 that owns the
//! broker's HA role, answers the `ha-broker` management entity and decides the
//! admission policy every shard applies.

use std::time::Instant;

use crate::amqp::codec::Value;

/// Which client connections a broker accepts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Admission {
    /// Everyone (a primary, or a stand-alone broker).
    #[default]
    Open,
    /// Only admin connections (`qpid.ha-admin`) and other brokers' links;
    /// ordinary clients are closed with `amqp:connection:forced` and this reason,
    /// which Qpid Proton and rhea treat as "try the next address".
    AdminOnly { reason: String },
}

/// What the HA handler wants done after it ran.
#[derive(Debug, Clone, Default)]
pub struct HaOutcome {
    /// The admission policy every shard should apply now.
    pub admission: Admission,
    /// When to call [`HaHandler::poll`] again at the latest.
    pub next_poll: Option<Instant>,
}

/// A management reply from the HA handler: status code and body, or an error.
pub type HaReply = Result<Value, (u16, String)>;

/// The broker's HA role, living on shard 0 (the ordering point).
pub trait HaHandler {
    /// Attributes of the `ha-broker` entity (status, broker id, epoch, URLs, members).
    fn attributes(&self) -> Vec<(&'static str, Value)>;
    /// A management operation on `ha-broker` other than READ (e.g. `PROMOTE`).
    fn operation(&mut self, operation: &str, body: &Value, now: Instant) -> HaReply;
    /// Timers and state changes; called on a short period and after operations.
    fn poll(&mut self, now: Instant) -> HaOutcome;
}

/// The properties a connection's open frame carries that admission looks at.
pub fn is_admin_connection(properties: Option<&Value>) -> bool {
    let Some(props) = properties else {
        return false;
    };
    ["qpid.ha-admin", "qpid.ha-backup"]
        .iter()
        .any(|k| match props.map_get(k) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(_) => true,
        })
}
