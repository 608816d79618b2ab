//! What the broker's HA role ([`crate::broker::HaBroker`]) and the
//! replication stream ([`crate::stream`]) say to each other: the commands the
//! role gives, the link events it hears, and the handler interface the stream
//! holds it by, on shard 0.

use std::time::Instant;

use tandem_shards::amqp::codec::Value;
use tandem_shards::broker::admission::Admission;

use crate::guard::MemberId;

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
    /// Primary: ask the broker at `brokers[index]` its epoch and status.
    Probe { index: usize, address: String },
    /// Primary: too few backups are ready (`ha-min-backups`): settlements of
    /// publishes to replicated queues wait, what waits now included.
    Withhold,
    /// Primary: enough backups are ready again.
    Release,
    /// Primary: a newer primary exists; held settlements are forgotten and
    /// the backups' links closed.
    StepDown,
    /// Just promoted at `epoch`: give new messages positions no earlier
    /// primary gave (clients wait until every shard did).
    Promoted { epoch: u64 },
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
    /// Backup: the primary at `brokers[index]` accepted our link; its epoch
    /// and cluster id.
    Up {
        index: usize,
        epoch: u64,
        cluster_id: Option<String>,
    },
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
    PeerStatus {
        index: usize,
        status: String,
        epoch: u64,
    },
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
    /// Primary: the answer of `brokers[index]` to our epoch probe (`None`:
    /// none came).
    ProbeAnswer {
        index: usize,
        answer: Option<crate::node::PeerEpoch>,
    },
}

/// Who a backup says it is when it attaches its replication link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupIdentity {
    pub broker_id: String,
    pub address: String,
    pub epoch: u64,
    /// Its `ha-replicate`, which must be the primary's (`None`: it did not
    /// say).
    pub replicate: Option<String>,
    /// Set when the link is an epoch probe, not a backup's: the prober's
    /// status. A probe is always refused, with our status and epoch.
    pub probing: Option<String>,
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
    /// Another broker probed us saying who it is (a primary that is
    /// outranked steps down); what we answer of ourselves.
    fn probed(&mut self, by: crate::node::PeerEpoch, now: Instant) -> crate::node::PeerEpoch;
    /// Our status now.
    fn status(&self) -> crate::status::BrokerStatus;
    /// Primary: the connected ready backups, with their addresses.
    fn ready_members(&self) -> Vec<(MemberId, String)>;
    /// `ha-replicate`: the default replication level (none, configuration, all).
    fn replicate_default(&self) -> &str;
    /// The epoch this broker knows now.
    fn epoch(&self) -> u64;
    /// The cluster this broker belongs to, once it knows.
    fn cluster_id(&self) -> Option<String>;
    /// The cluster's members as this broker knows them.
    fn members(&self) -> Vec<crate::node::MemberInfo> {
        Vec::new()
    }
    /// Counters for metrics: how often this broker became primary, and
    /// stepped down.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// Whether a connection's open frame marks it as an admin tool's
/// (`qpid.ha-admin`) or another broker's link (`qpid.ha-backup`).
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
