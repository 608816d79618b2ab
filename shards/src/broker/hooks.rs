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

pub use crate::replica::guard::MemberId;

/// Something the HA role asks the shards to do.
#[derive(Debug, Clone, PartialEq)]
pub enum HaCommand {
    /// Backup: open the replication link to `brokers[index]` at `address`.
    Connect { index: usize, address: String },
    /// Backup: close the replication link.
    Disconnect,
    /// Primary: settlements on every replicated queue now wait for `member`.
    Guard { member: MemberId },
    /// Primary: nothing waits for `member` any more; with `disconnect`, close
    /// its link too.
    Drop { member: MemberId, disconnect: bool },
    /// Primary: send the membership to every backup.
    Members {
        epoch: u64,
        members: Vec<(String, String, String)>,
    },
}

/// What the HA handler wants done after it ran.
#[derive(Debug, Clone, Default)]
pub struct HaOutcome {
    /// The admission policy every shard should apply now.
    pub admission: Admission,
    /// When to call [`HaHandler::poll`] again at the latest.
    pub next_poll: Option<Instant>,
    /// Commands, in order.
    pub commands: Vec<HaCommand>,
}

/// Events of the replication link and of backups' links, for the HA role.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkEvent {
    /// Backup: the primary at `brokers[index]` accepted our link; its epoch.
    Up { index: usize, epoch: u64 },
    /// Backup: connecting to `brokers[index]` failed or was refused.
    Failed { index: usize },
    /// Backup: the link dropped.
    Lost,
    /// Backup: an event of the stream could not be applied; our copy is not
    /// trustworthy until a new link has re-synchronised it.
    Diverged,
    /// Backup: the broker at `brokers[index]` refused our link because it is
    /// not a primary; its status (a joining broker uses this to know whether a
    /// ready backup exists, and so whether it may be promoted).
    PeerStatus { index: usize, status: String },
    /// Backup: traffic from the primary.
    PrimaryHeard,
    /// Backup: the primary's membership.
    Members {
        epoch: u64,
        members: Vec<(String, String, String)>,
    },
    /// Primary: a backup caught up on every replicated queue.
    BackupReady { member: MemberId },
    /// Primary: traffic from a backup.
    BackupHeard { member: MemberId },
    /// Primary: a backup's link closed.
    BackupLost { member: MemberId },
}

/// Who a backup says it is when it attaches its replication link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupIdentity {
    pub broker_id: String,
    pub address: String,
    pub epoch: u64,
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
    /// Something happened on a replication link.
    fn link_event(&mut self, event: LinkEvent, now: Instant);
    /// Primary: a backup attached its replication link; its member id, or why
    /// it is refused.
    fn backup_attached(&mut self, who: BackupIdentity, now: Instant) -> Result<MemberId, String>;
    /// Backup: who we say we are on our replication link.
    fn identity(&self) -> BackupIdentity;
    /// `ha-replicate`: the default replication level (none, configuration, all).
    fn replicate_default(&self) -> &str;
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
