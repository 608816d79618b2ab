//! One broker's HA role as a sans-I/O state machine: inputs (commands, link
//! events, what peers said, the clock) go in; actions (connect there, guard this
//! backup, drop that one, status changed) come out. The runtime carries actions
//! out; tests drive several nodes with a virtual clock.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::guard::MemberId;
use crate::status::BrokerStatus;

/// Settings of the HA role (from the `ha-*` options).
#[derive(Debug, Clone)]
pub struct HaSettings {
    /// This broker's identity (stable for the process lifetime).
    pub broker_id: String,
    /// `ha-brokers-url`: every broker's replication address, in order.
    pub brokers: Vec<String>,
    /// `ha-backup-timeout`: how long a new primary waits for an expected backup.
    pub backup_timeout: Duration,
    /// `ha-min-backups`: a primary with fewer ready backups withholds the
    /// settlement of publishes to replicated queues (0: never).
    pub min_backups: usize,
    /// `link-heartbeat-interval`: silence for twice this drops a peer.
    pub heartbeat: Duration,
    /// `link-maintenance-interval`: how often a backup retries the next address.
    pub maintenance: Duration,
    /// Our own entry in `brokers`, which a backup does not try to replicate from.
    pub own_address: Option<String>,
    /// The epoch this broker last knew (persisted in data-dir across restarts).
    pub initial_epoch: u64,
    /// The cluster this broker's data-dir belongs to (persisted beside the
    /// epoch); `None` before its first promotion or join.
    pub initial_cluster_id: Option<String>,
}

/// A cluster member as the primary tells its backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub broker_id: String,
    pub address: String,
    pub status: BrokerStatus,
}

/// What a broker says of itself to an epoch probe, or when it probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEpoch {
    pub broker_id: String,
    pub epoch: u64,
    pub status: BrokerStatus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// `tandem-ha promote`; `cluster_manager` is the `--cluster-manager` flag.
    Promote { cluster_manager: bool },
    /// Backup: the broker at `brokers[index]` accepted our replication link;
    /// its epoch and cluster id.
    LinkUp {
        index: usize,
        epoch: u64,
        cluster_id: Option<String>,
    },
    /// Backup: connecting to `brokers[index]` failed or was refused.
    LinkFailed { index: usize },
    /// Backup: the replication link dropped.
    LinkLost,
    /// Backup: an event of the stream could not be applied, so what we hold
    /// is not a copy of the primary: not ready until re-synchronised.
    Diverged,
    /// Backup: traffic (or a heartbeat) from the primary.
    PrimaryHeard,
    /// Backup: the primary's view of the cluster.
    Members(Vec<MemberInfo>),
    /// Joining broker: what a peer answered to a status probe (`None`: no answer).
    PeerStatus {
        address: String,
        status: Option<BrokerStatus>,
        /// The epoch it knows (0: it did not say).
        epoch: u64,
    },
    /// Primary: what the peer at `brokers[index]` answered to our epoch
    /// probe (`None`: no answer).
    ProbeAnswer {
        index: usize,
        answer: Option<PeerEpoch>,
    },
    /// Another broker probed us, saying who it is.
    ProbedBy(PeerEpoch),
    /// Primary: a backup's replication link arrived.
    BackupConnected {
        broker_id: String,
        address: String,
        epoch: u64,
    },
    /// Primary: the backup has caught up on every replicated queue.
    BackupReady { member: MemberId },
    /// Primary: traffic (or a heartbeat) from a backup.
    BackupHeard { member: MemberId },
    /// Primary: the backup's link dropped.
    BackupLost { member: MemberId },
    /// The clock moved.
    Tick,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The status changed (log it, report it).
    Status {
        from: BrokerStatus,
        to: BrokerStatus,
    },
    /// Backup: open the replication link to this address.
    Connect { index: usize, address: String },
    /// Backup: close the replication link (promoted, or primary silent).
    Disconnect,
    /// Primary: settlements on every replicated queue now wait for this backup.
    Guard { member: MemberId },
    /// Primary: nothing waits for this backup any more; with `disconnect`, close
    /// its link too (it was silent), so it rejoins when it wakes up.
    DropBackup {
        member: MemberId,
        reason: String,
        disconnect: bool,
    },
    /// Primary: tell the backups the new membership.
    BroadcastMembers,
    /// Primary: fewer than `needed` backups are ready (`ready`): settlements
    /// of publishes to replicated queues wait, and what waits now keeps
    /// waiting. Comes before anything that drops a backup.
    Withhold { ready: usize, needed: usize },
    /// Primary: `ha-min-backups` backups are ready again; what waited only
    /// for them settles. Comes after what made them ready.
    Release { ready: usize },
    /// Primary: a newer primary exists; stop serving clients. Settlements
    /// still held are forgotten, not given.
    StepDown { newer_epoch: u64 },
    /// Primary: ask the broker at `brokers[index]` its epoch and status
    /// (fencing: a primary keeps asking its peers whether a newer primary
    /// exists).
    Probe { index: usize, address: String },
    /// Primary: the backup `member` is accepted; this is its id.
    Accepted { member: MemberId },
    /// Backup: the primary at `address` belongs to another cluster than our
    /// data-dir: we do not join it.
    ForeignCluster {
        address: String,
        ours: String,
        theirs: String,
    },
}

/// Why a promotion was refused (the tool prints it, exits non-zero).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromoteError {
    #[error("promote may only be called by the cluster manager (use --cluster-manager)")]
    NotClusterManager,
    #[error("still catching up, cannot be promoted: promote a ready backup")]
    CatchingUp,
    #[error("joining a cluster that has a primary or a ready backup ({0}); cannot be promoted")]
    JoiningActiveCluster(String),
    #[error("still checking the other brokers' status before a joining broker may become primary; retry shortly")]
    Probing,
    #[error("a backup of a live primary ({0}, heard from {1} ms ago): promote a backup only once its primary has failed (stop the primary first to move it)")]
    PrimaryAlive(String, u128),
    #[error("joining, and only {answered} of the {others} other brokers answered: most of the cluster must say it is joining too before a joining broker becomes the first primary")]
    NoQuorum { answered: usize, others: usize },
    #[error("not in a cluster (ha-cluster = no)")]
    Standalone,
    #[error(
        "the cluster epoch is at its largest value ({}): no promotion can raise it",
        u64::MAX
    )]
    EpochExhausted,
}

#[derive(Debug, Clone)]
struct Member {
    broker_id: String,
    address: String,
    status: BrokerStatus,
    connected: bool,
    last_heard: Instant,
    /// Expected since promotion: dropped when not ready by then.
    expected_until: Option<Instant>,
}

pub struct HaNode {
    settings: HaSettings,
    status: BrokerStatus,
    /// Raised by each promotion; carried on every broker link.
    epoch: u64,
    /// The cluster's id: our own broker id at our first promotion, else the
    /// first primary's we joined.
    cluster_id: Option<String>,
    // -- backup side
    link: Option<usize>,
    connecting: Option<usize>,
    /// When the current attempt started (a hung peer must not stall us).
    connecting_since: Instant,
    next_index: usize,
    next_attempt: Instant,
    primary_heard: Instant,
    /// When the last input was handled: a backup linked to its primary
    /// handles one at least every heartbeat, so a longer gap means this
    /// process was stopped (SIGSTOP, a hung host).
    last_input: Instant,
    /// The membership last heard from the primary.
    known: Vec<MemberInfo>,
    /// Joining: statuses peers reported to probes.
    peers: HashMap<String, BrokerStatus>,
    /// Indexes of `brokers` tried at least once (answered or unreachable).
    probed: std::collections::HashSet<usize>,
    // -- primary side
    members: BTreeMap<MemberId, Member>,
    next_member: MemberId,
    /// Settlements are withheld for want of `ha-min-backups` ready backups.
    withholding: bool,
    // -- primary side: fencing
    /// Peers probed and not answered yet (index into `brokers`), since when.
    probes: HashMap<usize, Instant>,
    next_probe: Instant,
    /// Lost backups whose holds are released only once every peer was
    /// probed since (a newer primary may exist, and then nothing settles).
    pending_drops: Vec<PendingDrop>,
}

/// A lost backup's drop, waiting for the peers' answers.
#[derive(Debug, Clone)]
struct PendingDrop {
    member: MemberId,
    reason: String,
    disconnect: bool,
    /// Peers (indexes into `brokers`) still to answer a probe.
    waiting: std::collections::HashSet<usize>,
}

impl HaNode {
    /// A clustered broker starts `joining`.
    pub fn new(settings: HaSettings, now: Instant) -> HaNode {
        HaNode {
            epoch: settings.initial_epoch,
            cluster_id: settings.initial_cluster_id.clone(),
            settings,
            status: BrokerStatus::Joining,
            link: None,
            connecting: None,
            connecting_since: now,
            next_index: 0,
            next_attempt: now,
            primary_heard: now,
            last_input: now,
            known: Vec::new(),
            peers: HashMap::new(),
            probed: std::collections::HashSet::new(),
            members: BTreeMap::new(),
            next_member: 1,
            withholding: false,
            probes: HashMap::new(),
            next_probe: now,
            pending_drops: Vec::new(),
        }
    }

    pub fn status(&self) -> BrokerStatus {
        self.status
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// How many brokers of `ha-brokers-url` are not this one.
    fn others(&self) -> usize {
        let own = self.settings.own_address.as_deref();
        self.settings
            .brokers
            .iter()
            .filter(|b| Some(b.as_str()) != own)
            .count()
    }

    /// Every other broker was tried at least once since we started, so a
    /// joining broker knows whether a primary or a ready backup exists.
    pub fn probed_all(&self) -> bool {
        self.settings.brokers.iter().enumerate().all(|(i, b)| {
            self.probed.contains(&i) || self.settings.own_address.as_deref() == Some(b.as_str())
        })
    }

    /// When to try the next address after an attempt: at once during the first
    /// round (so a joining broker learns its peers quickly), then every
    /// `link-maintenance-interval`.
    fn after_attempt(&self, now: Instant) -> Instant {
        if self.probed_all() {
            now + self.settings.maintenance
        } else {
            now
        }
    }

    /// The address of `brokers[index]`.
    pub fn broker_address(&self, index: usize) -> Option<String> {
        self.settings.brokers.get(index).cloned()
    }

    pub fn broker_id(&self) -> &str {
        &self.settings.broker_id
    }

    /// `ha-min-backups`.
    pub fn min_backups(&self) -> usize {
        self.settings.min_backups
    }

    /// Connected backups that caught up on every replicated queue.
    pub fn ready_backups(&self) -> usize {
        self.ready_member_list().len()
    }

    /// The connected ready backups: member id and address.
    pub fn ready_member_list(&self) -> Vec<(MemberId, String)> {
        self.members
            .iter()
            .filter(|(_, m)| m.connected && m.status == BrokerStatus::Ready)
            .map(|(id, m)| (*id, m.address.clone()))
            .collect()
    }

    /// Primary: why settlements wait (fewer ready backups than
    /// `ha-min-backups`), if they do.
    pub fn withheld(&self) -> Option<String> {
        self.withholding.then(|| {
            format!(
                "{} of ha-min-backups {} backups ready: publishes to replicated queues wait",
                self.ready_backups(),
                self.settings.min_backups
            )
        })
    }

    /// Withholds or releases settlements as the ready backups now number:
    /// withholding goes first in `out` (before any drop), release last.
    fn mind_min_backups(&mut self, out: &mut Vec<Action>) {
        let needed = self.settings.min_backups;
        let serving = matches!(self.status, BrokerStatus::Recovering | BrokerStatus::Active);
        let ready = self.ready_backups();
        let short = serving && needed > 0 && ready < needed;
        if short && !self.withholding {
            self.withholding = true;
            out.insert(0, Action::Withhold { ready, needed });
        } else if !short && self.withholding && serving {
            self.withholding = false;
            out.push(Action::Release { ready });
        }
    }

    /// The membership as this broker knows it (primary: its own table).
    pub fn members(&self) -> Vec<MemberInfo> {
        if self.status.is_primary() {
            self.members
                .values()
                .map(|m| MemberInfo {
                    broker_id: m.broker_id.clone(),
                    address: m.address.clone(),
                    status: m.status,
                })
                .collect()
        } else {
            self.known.clone()
        }
    }

    fn become_(&mut self, to: BrokerStatus, out: &mut Vec<Action>) {
        if self.status == to {
            return;
        }
        debug_assert!(self.status.can_become(to), "{} -> {to}", self.status);
        out.push(Action::Status {
            from: self.status,
            to,
        });
        self.status = to;
    }

    /// Stopped for over twice the heartbeat while following a primary (no
    /// input since: a linked backup hears its primary every heartbeat): the
    /// primary has dropped us and settled without us since, whatever old
    /// bytes we read now say. Not ready; find the primary again.
    ///
    /// Every input calls it; so must whoever asks the node anything else
    /// first (a promotion), carrying out what it returns.
    pub fn notice_stop(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let stopped = now.duration_since(self.last_input) > self.settings.heartbeat * 2;
        self.last_input = now;
        if !(stopped && self.link.is_some() && self.status.is_backup()) {
            return out;
        }
        if self.status == BrokerStatus::Ready {
            tracing::warn!(
                "HA: this broker did not run for {} ms (stopped?): the primary has dropped it; not ready until caught up again",
                now.duration_since(self.primary_heard).as_millis()
            );
            self.become_(BrokerStatus::CatchUp, &mut out);
        }
        self.lose_primary(now, &mut out);
        out
    }

    /// Promotion, as `tandem-ha --cluster-manager promote` asks.
    pub fn promote(
        &mut self,
        cluster_manager: bool,
        now: Instant,
    ) -> Result<Vec<Action>, PromoteError> {
        if !cluster_manager {
            return Err(PromoteError::NotClusterManager);
        }
        let mut out = Vec::new();
        match self.status {
            BrokerStatus::Standalone => return Err(PromoteError::Standalone),
            BrokerStatus::Recovering | BrokerStatus::Active => return Ok(out),
            BrokerStatus::CatchUp => return Err(PromoteError::CatchingUp),
            BrokerStatus::Joining => {
                if let Some((addr, st)) = self
                    .peers
                    .iter()
                    .find(|(_, s)| **s != BrokerStatus::Joining)
                {
                    return Err(PromoteError::JoiningActiveCluster(format!(
                        "{addr} is {st}"
                    )));
                }
                if !self.probed_all() {
                    return Err(PromoteError::Probing);
                }
                // Unreachable peers say nothing: a broker of a cluster that
                // had a primary (it knows an epoch), cut off from the others
                // or not yet probing again after a partition, would take
                // itself for the first. Most of the cluster must have
                // answered that it is joining too. (A new cluster, epoch 0,
                // may start from one broker.)
                let others = self.others();
                if self.epoch > 0 && (self.peers.len() + 1) * 2 <= others + 1 {
                    return Err(PromoteError::NoQuorum {
                        answered: self.peers.len(),
                        others,
                    });
                }
            }
            BrokerStatus::Ready => {
                // Two primaries would each settle on their own: the one we
                // follow is alive as long as it is heard within twice the
                // heartbeat (after that it drops us anyway).
                let heard = now.duration_since(self.primary_heard);
                if let Some(index) = self.link {
                    if heard <= self.settings.heartbeat * 2 {
                        let address = self
                            .settings
                            .brokers
                            .get(index)
                            .cloned()
                            .unwrap_or_default();
                        return Err(PromoteError::PrimaryAlive(address, heard.as_millis()));
                    }
                }
            }
        }
        let expected: Vec<MemberInfo> = self
            .known
            .iter()
            .filter(|m| m.broker_id != self.settings.broker_id && m.status == BrokerStatus::Ready)
            .cloned()
            .collect();
        if self.link.take().is_some() || self.connecting.take().is_some() {
            out.push(Action::Disconnect);
        }
        self.epoch = self
            .epoch
            .checked_add(1)
            .ok_or(PromoteError::EpochExhausted)?;
        if self.cluster_id.is_none() {
            self.cluster_id = Some(self.settings.broker_id.clone());
        }
        self.become_(BrokerStatus::Recovering, &mut out);
        for m in expected {
            let id = self.next_member;
            self.next_member += 1;
            self.members.insert(
                id,
                Member {
                    broker_id: m.broker_id,
                    address: m.address,
                    status: BrokerStatus::CatchUp,
                    connected: false,
                    last_heard: now,
                    expected_until: Some(now + self.settings.backup_timeout),
                },
            );
            out.push(Action::Guard { member: id });
        }
        self.maybe_active(&mut out);
        self.mind_min_backups(&mut out);
        Ok(out)
    }

    /// Handles one input at `now`.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut out = self.notice_stop(now);
        match input {
            Input::Promote { cluster_manager } => {
                if let Ok(actions) = self.promote(cluster_manager, now) {
                    out = actions;
                }
            }
            Input::LinkUp {
                index,
                epoch,
                cluster_id,
            } => {
                self.connecting = None;
                self.probed.insert(index);
                if let (Some(ours), Some(theirs)) = (&self.cluster_id, &cluster_id) {
                    if ours != theirs {
                        out.push(Action::ForeignCluster {
                            address: self
                                .settings
                                .brokers
                                .get(index)
                                .cloned()
                                .unwrap_or_default(),
                            ours: ours.clone(),
                            theirs: theirs.clone(),
                        });
                        out.push(Action::Disconnect);
                        self.next_attempt = self.after_attempt(now);
                        return out;
                    }
                }
                if self.status.is_backup() {
                    if self.cluster_id.is_none() {
                        self.cluster_id = cluster_id;
                    }
                    self.link = Some(index);
                    self.epoch = self.epoch.max(epoch);
                    self.primary_heard = now;
                    // Even a ready backup re-synchronises from a new primary (its
                    // queues are sent again), so it is not promotable until the
                    // primary says it caught up.
                    self.become_(BrokerStatus::CatchUp, &mut out);
                }
            }
            Input::LinkFailed { index } => {
                // Unreachable: whatever it said before no longer counts.
                if let Some(address) = self.settings.brokers.get(index) {
                    self.peers.remove(address);
                }
                self.probed.insert(index);
                if self.connecting == Some(index) {
                    self.connecting = None;
                    self.next_attempt = self.after_attempt(now);
                }
            }
            Input::LinkLost => self.lose_primary(now, &mut out),
            Input::Diverged => {
                if self.status == BrokerStatus::Ready {
                    self.become_(BrokerStatus::CatchUp, &mut out);
                }
                self.lose_primary(now, &mut out);
            }
            Input::PrimaryHeard => self.primary_heard = now,
            Input::Members(list) => {
                if let Some(me) = list.iter().find(|m| m.broker_id == self.settings.broker_id) {
                    match (self.status, me.status) {
                        // The primary saw us catch up on every queue.
                        (BrokerStatus::CatchUp, BrokerStatus::Ready) => {
                            self.become_(BrokerStatus::Ready, &mut out)
                        }
                        // It timed us out while it was recovering: catch up again.
                        (BrokerStatus::Ready, BrokerStatus::CatchUp) => {
                            self.become_(BrokerStatus::CatchUp, &mut out)
                        }
                        _ => {}
                    }
                }
                self.known = list;
            }
            Input::PeerStatus {
                address,
                status,
                epoch,
            } => {
                // A peer that refused our link because it is not primary: a
                // failed attempt that told us the peer's status. The epoch it
                // knows is one we know now: a promotion goes past it.
                if !self.status.is_primary() {
                    self.epoch = self.epoch.max(epoch);
                }
                if let Some(index) = self.settings.brokers.iter().position(|b| *b == address) {
                    self.probed.insert(index);
                    if self.connecting == Some(index) {
                        self.connecting = None;
                        self.next_attempt = self.after_attempt(now);
                    }
                }
                match status {
                    Some(s) => {
                        self.peers.insert(address, s);
                    }
                    None => {
                        self.peers.remove(&address);
                    }
                }
            }
            Input::BackupConnected {
                broker_id,
                address,
                epoch,
            } => self.backup_connected(broker_id, address, epoch, now, &mut out),
            Input::BackupReady { member } => {
                // Only of a live link: the ready of a link already lost
                // (heard after its loss, in the same step) would turn an
                // expected backup's placeholder into a member no link owns,
                // never dropped, and the backup's next link a second member.
                if let Some(m) = self.members.get_mut(&member).filter(|m| m.connected) {
                    m.status = BrokerStatus::Ready;
                    m.expected_until = None;
                    m.last_heard = now;
                    out.push(Action::BroadcastMembers);
                }
                self.maybe_active(&mut out);
            }
            Input::BackupHeard { member } => {
                if let Some(m) = self.members.get_mut(&member) {
                    m.last_heard = now;
                }
            }
            Input::BackupLost { member } => {
                if let Some(m) = self.members.get_mut(&member) {
                    m.connected = false;
                    if m.expected_until.is_none() {
                        // Not one we wait for at promotion: forget it.
                        if let Some(m) = self.members.remove(&member) {
                            let lost = (member, m);
                            self.lose_backup(lost, "link closed".into(), false, now, &mut out);
                        }
                        out.push(Action::BroadcastMembers);
                    }
                }
            }
            Input::ProbeAnswer { index, answer } => {
                self.probe_answered(index, answer, now, &mut out)
            }
            Input::ProbedBy(peer) => self.heed(&peer, now, &mut out),
            Input::Tick => self.tick(now, &mut out),
        }
        self.mind_min_backups(&mut out);
        out
    }

    fn lose_primary(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.link.take().is_some() || self.connecting.take().is_some() {
            out.push(Action::Disconnect);
        }
        // A ready backup stays ready: it holds everything the dead primary had
        // settled, which is what makes it promotable, even when the primary
        // went silent rather than closing (a hung or powered-off host: every
        // backup times out alike, and one must stay promotable). One that was
        // stopped itself is not ready any more ([`HaNode::notice_stop`]). One
        // still catching up has nothing trustworthy and looks for a primary
        // again.
        if self.status == BrokerStatus::CatchUp {
            self.become_(BrokerStatus::Joining, out);
            // What the peers said when we last joined is stale: ask again
            // before a promotion counts on it.
            self.peers.clear();
            self.probed.clear();
        }
        self.next_attempt = now;
    }

    fn backup_connected(
        &mut self,
        broker_id: String,
        address: String,
        epoch: u64,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if !self.status.is_primary() || self.status == BrokerStatus::Standalone {
            return;
        }
        if epoch > self.epoch {
            // A backup that followed a newer primary: we are stale.
            return self.step_down(epoch, now, out);
        }
        // One member per link: a member lives as long as the link that made it,
        // so closing a stale or duplicate link never unguards a live backup. The
        // one exception is an expected backup's placeholder (made at promotion,
        // keyed by broker id): its first link takes it over, guards and all.
        let placeholder = self
            .members
            .iter()
            .find(|(_, m)| m.broker_id == broker_id && !m.connected && m.expected_until.is_some())
            .map(|(id, _)| *id);
        let (id, expected_until) = match placeholder {
            Some(id) => (id, self.members.get(&id).and_then(|m| m.expected_until)),
            None => {
                let id = self.next_member;
                self.next_member += 1;
                out.push(Action::Guard { member: id });
                (id, None)
            }
        };
        self.members.insert(
            id,
            Member {
                broker_id,
                address,
                status: BrokerStatus::CatchUp,
                connected: true,
                last_heard: now,
                expected_until,
            },
        );
        out.push(Action::Accepted { member: id });
        out.push(Action::BroadcastMembers);
    }

    /// A newer primary exists: stop being primary, forget the backups (what
    /// they held is forgotten, not settled), look for it.
    fn step_down(&mut self, newer_epoch: u64, now: Instant, out: &mut Vec<Action>) {
        out.push(Action::StepDown { newer_epoch });
        self.members.clear();
        self.withholding = false;
        self.probes.clear();
        self.pending_drops.clear();
        self.epoch = self.epoch.max(newer_epoch);
        self.become_(BrokerStatus::Joining, out);
        self.next_attempt = now;
    }

    /// Whether `peer` says a primary newer than us exists. Epochs order
    /// primaries, and of two promoted at the same epoch (each cut off from
    /// the other's promotion) the greater broker id wins. A backup with a
    /// newer epoch followed a newer primary.
    fn outranked_by(&self, peer: &PeerEpoch) -> bool {
        if peer.broker_id == self.settings.broker_id {
            return false;
        }
        peer.epoch > self.epoch
            || (peer.epoch == self.epoch
                && peer.status.is_primary()
                && peer.status != BrokerStatus::Standalone
                && peer.broker_id.as_str() > self.settings.broker_id.as_str())
    }

    /// A primary that hears of a newer one steps down at once.
    fn heed(&mut self, peer: &PeerEpoch, now: Instant, out: &mut Vec<Action>) {
        let serving = matches!(self.status, BrokerStatus::Recovering | BrokerStatus::Active);
        if serving && self.outranked_by(peer) {
            tracing::error!(
                "HA: broker {} is {} at epoch {} (ours {}): it outranks us",
                peer.broker_id,
                peer.status,
                peer.epoch,
                self.epoch
            );
            self.step_down(peer.epoch, now, out);
        } else if !serving {
            self.epoch = self.epoch.max(peer.epoch);
        }
    }

    /// Indexes of the other brokers of `ha-brokers-url`.
    fn peer_indexes(&self) -> Vec<usize> {
        let own = self.settings.own_address.as_deref();
        (0..self.settings.brokers.len())
            .filter(|&i| own != Some(self.settings.brokers[i].as_str()))
            .collect()
    }

    /// How often a primary asks its peers for their epoch, and how long it
    /// waits for an answer.
    fn probe_interval(&self) -> Duration {
        self.settings.maintenance.min(self.settings.heartbeat)
    }

    fn probe_timeout(&self) -> Duration {
        self.settings.heartbeat.max(Duration::from_secs(1))
    }

    /// Probes every peer not already being probed.
    fn probe_peers(&mut self, now: Instant, out: &mut Vec<Action>) {
        for index in self.peer_indexes() {
            if self.probes.contains_key(&index) {
                continue;
            }
            self.probes.insert(index, now);
            out.push(Action::Probe {
                index,
                address: self.settings.brokers[index].clone(),
            });
        }
        self.next_probe = now + self.probe_interval();
    }

    /// A backup is gone. Its holds are released once every peer has been
    /// probed since: if a newer primary exists we step down instead, and
    /// nothing that waited for this backup settles.
    fn lose_backup(
        &mut self,
        lost: (MemberId, Member),
        reason: String,
        disconnect: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let (member, m) = lost;
        // Not the lost backup itself: silent, it would not answer either.
        let waiting: std::collections::HashSet<usize> = self
            .peer_indexes()
            .into_iter()
            .filter(|&i| self.settings.brokers[i] != m.address)
            .collect();
        self.pending_drops.push(PendingDrop {
            member,
            reason,
            disconnect,
            waiting,
        });
        // Probe now, not at the next round (those in flight count too).
        self.probe_peers(now, out);
        self.release_probed_drops(out);
    }

    /// Drops the lost backups every peer has answered for since.
    fn release_probed_drops(&mut self, out: &mut Vec<Action>) {
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_drops)
            .into_iter()
            .partition(|d| d.waiting.is_empty());
        self.pending_drops = waiting;
        for d in done {
            out.push(Action::DropBackup {
                member: d.member,
                reason: d.reason,
                disconnect: d.disconnect,
            });
        }
    }

    /// An answer to a probe, or none.
    fn probe_answered(
        &mut self,
        index: usize,
        answer: Option<PeerEpoch>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.probes.remove(&index);
        for d in &mut self.pending_drops {
            d.waiting.remove(&index);
        }
        if let Some(peer) = answer {
            self.heed(&peer, now, out);
        }
        self.release_probed_drops(out);
    }

    fn maybe_active(&mut self, out: &mut Vec<Action>) {
        if self.status == BrokerStatus::Recovering
            && self.members.values().all(|m| m.expected_until.is_none())
        {
            self.become_(BrokerStatus::Active, out);
            out.push(Action::BroadcastMembers);
        }
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        let silence = self.settings.heartbeat * 2;
        if self.status.is_backup() {
            if self.link.is_some() && now.duration_since(self.primary_heard) > silence {
                self.lose_primary(now, out);
            }
            // A peer that accepted the TCP connection but never answers (stopped,
            // hung) counts as unreachable after twice the heartbeat.
            if let Some(index) = self.connecting {
                if now.duration_since(self.connecting_since) > silence.max(Duration::from_secs(1)) {
                    out.push(Action::Disconnect);
                    self.connecting = None;
                    self.probed.insert(index);
                    if let Some(address) = self.settings.brokers.get(index) {
                        self.peers.remove(address);
                    }
                    self.next_attempt = self.after_attempt(now);
                }
            }
            if self.link.is_none()
                && self.connecting.is_none()
                && now >= self.next_attempt
                && !self.settings.brokers.is_empty()
            {
                let n = self.settings.brokers.len();
                let mut index = self.next_index % n;
                if n > 1
                    && self.settings.own_address.as_deref()
                        == Some(self.settings.brokers[index].as_str())
                {
                    index = (index + 1) % n;
                }
                self.next_index = index + 1;
                self.connecting = Some(index);
                self.connecting_since = now;
                self.next_attempt = now + self.settings.maintenance;
                out.push(Action::Connect {
                    index,
                    address: self.settings.brokers[index].clone(),
                });
            }
            return;
        }
        if !matches!(self.status, BrokerStatus::Recovering | BrokerStatus::Active) {
            return;
        }
        // Fencing: a probe unanswered for too long is no answer.
        let timeout = self.probe_timeout();
        let overdue: Vec<usize> = self
            .probes
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= timeout)
            .map(|(i, _)| *i)
            .collect();
        for index in overdue {
            self.probe_answered(index, None, now, out);
            if !self.status.is_primary() {
                return;
            }
        }
        if now >= self.next_probe {
            self.probe_peers(now, out);
        }
        let mut dropped = Vec::new();
        for (id, m) in &mut self.members {
            if let Some(until) = m.expected_until {
                if now >= until && m.status != BrokerStatus::Ready {
                    dropped.push((
                        *id,
                        format!(
                            "expected backup {} not ready after ha-backup-timeout",
                            m.address
                        ),
                        false,
                    ));
                    m.expected_until = None;
                    m.status = BrokerStatus::CatchUp;
                }
            } else if m.connected && now.duration_since(m.last_heard) > silence {
                dropped.push((
                    *id,
                    format!(
                        "backup {} silent for 2 x link-heartbeat-interval",
                        m.address
                    ),
                    true,
                ));
                m.connected = false;
            }
        }
        for (member, reason, disconnect) in dropped {
            let still_connected = self.members.get(&member).is_some_and(|m| m.connected);
            if still_connected {
                // Timed out while catching up: it guards messages from now on, and
                // becomes ready again once it has caught up.
                out.push(Action::DropBackup {
                    member,
                    reason,
                    disconnect,
                });
                out.push(Action::Guard { member });
            } else if disconnect {
                // Silent: lost, released once the peers were probed.
                if let Some(m) = self.members.remove(&member) {
                    self.lose_backup((member, m), reason, disconnect, now, out);
                }
            } else {
                // An expected backup that never came: ha-backup-timeout is
                // how long it is waited for.
                self.members.remove(&member);
                out.push(Action::DropBackup {
                    member,
                    reason,
                    disconnect,
                });
            }
            out.push(Action::BroadcastMembers);
        }
        self.maybe_active(out);
    }

    /// When the runtime should call `handle(Tick)` next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let silence = self.settings.heartbeat * 2;
        let mut next: Vec<Instant> = Vec::new();
        if self.status.is_backup() {
            if self.link.is_some() {
                next.push(self.primary_heard + silence);
            } else if self.connecting.is_none() {
                next.push(self.next_attempt);
            } else {
                next.push(self.connecting_since + silence.max(Duration::from_secs(1)));
            }
        } else {
            if matches!(self.status, BrokerStatus::Recovering | BrokerStatus::Active) {
                next.push(self.next_probe);
                let timeout = self.probe_timeout();
                next.extend(self.probes.values().map(|since| *since + timeout));
            }
            for m in self.members.values() {
                match m.expected_until {
                    Some(t) => next.push(t),
                    None if m.connected => next.push(m.last_heard + silence),
                    None => {}
                }
            }
        }
        next.into_iter().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(now: Instant) -> HaNode {
        HaNode::new(
            HaSettings {
                broker_id: "b1".into(),
                brokers: vec!["a:1".into(), "b:1".into()],
                backup_timeout: Duration::from_secs(1),
                min_backups: 0,
                heartbeat: Duration::from_secs(1),
                maintenance: Duration::from_millis(100),
                own_address: Some("b:1".into()),
                initial_epoch: 0,
                initial_cluster_id: None,
            },
            now,
        )
    }

    /// A backup linked to its primary (epoch 1), which said it is ready.
    fn ready_backup(now: Instant) -> HaNode {
        let mut n = node(now);
        n.handle(
            Input::LinkUp {
                index: 0,
                epoch: 1,
                cluster_id: None,
            },
            now,
        );
        n.handle(Input::Members(vec![ready(BrokerStatus::Ready)]), now);
        n
    }

    fn ready(status: BrokerStatus) -> MemberInfo {
        MemberInfo {
            broker_id: "b1".into(),
            address: "b:1".into(),
            status,
        }
    }

    #[test]
    fn the_cluster_id_is_the_first_primarys_and_another_clusters_primary_is_not_joined() {
        let now = Instant::now();
        // A first promotion names the cluster after the promoted broker.
        let mut first = node(now);
        first.handle(
            Input::PeerStatus {
                address: "a:1".into(),
                status: None,
                epoch: 0,
            },
            now,
        );
        first.promote(true, now).expect("promoted");
        assert_eq!(first.cluster_id(), Some("b1"));
        // A broker without one adopts its primary's.
        let mut fresh = node(now);
        let up = |id: &str| Input::LinkUp {
            index: 0,
            epoch: 1,
            cluster_id: Some(id.into()),
        };
        fresh.handle(up("c1"), now);
        assert_eq!(fresh.cluster_id(), Some("c1"));
        assert_eq!(fresh.status(), BrokerStatus::CatchUp);
        // One whose data-dir belongs to another cluster does not join it.
        let mut other = HaNode::new(
            HaSettings {
                initial_cluster_id: Some("c2".into()),
                ..node(now).settings
            },
            now,
        );
        let actions = other.handle(up("c1"), now);
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::ForeignCluster { ours, theirs, .. }
                if ours == "c2" && theirs == "c1")),
            "{actions:?}"
        );
        assert!(actions.contains(&Action::Disconnect), "{actions:?}");
        assert_eq!(other.status(), BrokerStatus::Joining);
        assert_eq!(other.cluster_id(), Some("c2"));
    }

    #[test]
    fn a_backup_of_a_live_primary_refuses_promotion() {
        let now = Instant::now();
        let mut n = ready_backup(now);
        let refused = n.promote(true, now + Duration::from_millis(100)).err();
        assert!(
            matches!(refused, Some(PromoteError::PrimaryAlive(_, 100))),
            "{refused:?}"
        );
        assert_eq!(n.status(), BrokerStatus::Ready, "nothing changed");
        // Once the primary is lost (a kill: the link ends at once) it may.
        n.handle(Input::LinkLost, now + Duration::from_millis(200));
        assert!(n.promote(true, now + Duration::from_millis(300)).is_ok());
    }

    #[test]
    fn a_backup_that_did_not_run_for_twice_the_heartbeat_is_ready_no_more() {
        let now = Instant::now();
        let mut n = ready_backup(now);
        assert_eq!(n.status(), BrokerStatus::Ready);
        // No input for longer than twice the heartbeat, the link up: it was
        // stopped, and the primary has dropped it and settled without it.
        let later = now + Duration::from_millis(2010); // heartbeat 1 s
        n.handle(Input::LinkLost, later);
        assert_eq!(n.status(), BrokerStatus::Joining);
        // One that ran and only stopped hearing its primary stays ready.
        let mut n = ready_backup(now);
        for ms in (100..2000).step_by(100) {
            n.handle(Input::Tick, now + Duration::from_millis(ms));
        }
        n.handle(Input::Tick, later);
        assert_eq!(n.status(), BrokerStatus::Ready);
    }

    #[test]
    fn promotion_refuses_to_wrap_the_epoch() {
        let now = Instant::now();
        let mut n = node(now);
        n.handle(
            Input::LinkUp {
                index: 0,
                epoch: u64::MAX,
                cluster_id: None,
            },
            now,
        );
        n.handle(Input::Members(vec![ready(BrokerStatus::Ready)]), now);
        assert_eq!(n.status(), BrokerStatus::Ready);
        n.handle(Input::LinkLost, now);
        assert_eq!(
            n.promote(true, now).err(),
            Some(PromoteError::EpochExhausted)
        );
        assert_eq!(n.status(), BrokerStatus::Ready, "nothing changed");
        assert_eq!(n.epoch(), u64::MAX);
    }

    #[test]
    fn a_second_link_with_the_same_broker_id_is_a_member_of_its_own() {
        let now = Instant::now();
        let mut n = node(now);
        n.handle(Input::LinkFailed { index: 0 }, now);
        n.promote(true, now).expect("first primary");
        let real = backup_b2_connects(&mut n, now).0;
        let impostor = backup_b2_connects(&mut n, now).0;
        assert_ne!(real, impostor, "one member per link");
        let out = n.handle(Input::BackupLost { member: impostor }, now);
        assert!(
            !out.iter()
                .any(|a| matches!(a, Action::DropBackup { member, .. } if *member == real)),
            "{out:?}"
        );
        assert_eq!(n.members().len(), 1);
    }

    #[test]
    fn an_expected_backups_first_link_takes_over_its_placeholder() {
        let now = Instant::now();
        let (mut n, out) = promoted_expecting_b2(now);
        let placeholder = out
            .iter()
            .find_map(|a| match a {
                Action::Guard { member } => Some(*member),
                _ => None,
            })
            .expect("the expected backup is guarded at promotion");
        let out = n.handle(
            Input::BackupConnected {
                broker_id: "b2".into(),
                address: "c:1".into(),
                epoch: 2,
            },
            now,
        );
        assert!(out.contains(&Action::Accepted {
            member: placeholder
        }));
        assert!(
            !out.iter().any(|a| matches!(a, Action::Guard { .. })),
            "already guarded: {out:?}"
        );
    }

    #[test]
    fn the_ready_of_a_lost_link_leaves_no_member_behind() {
        let now = Instant::now();
        let (mut n, _) = promoted_expecting_b2(now);
        let first = backup_b2_connects(&mut n, now).0;
        // The link is lost, and its ready, sent before, is heard after
        // (found by the fault-schedule search, seed 250).
        n.handle(Input::BackupLost { member: first }, now);
        n.handle(Input::BackupReady { member: first }, now);
        let again = backup_b2_connects(&mut n, now).0;
        assert_eq!(again, first, "the placeholder is taken over again");
        assert_eq!(n.members().len(), 1, "{:?}", n.members());
    }

    /// A backup of a primary with another ready backup, b2 (at c:1), that
    /// lost its primary and was promoted: it expects b2. What promotion did.
    fn promoted_expecting_b2(now: Instant) -> (HaNode, Vec<Action>) {
        let mut n = ready_backup(now);
        let other = MemberInfo {
            broker_id: "b2".into(),
            address: "c:1".into(),
            status: BrokerStatus::Ready,
        };
        n.handle(Input::Members(vec![ready(BrokerStatus::Ready), other]), now);
        n.handle(Input::LinkLost, now);
        let out = n.promote(true, now).expect("ready");
        (n, out)
    }

    /// Backup b2 (at c:1, epoch 1) connects to primary `n`: its member id,
    /// and what `n` did.
    fn backup_b2_connects(n: &mut HaNode, now: Instant) -> (MemberId, Vec<Action>) {
        let out = n.handle(
            Input::BackupConnected {
                broker_id: "b2".into(),
                address: "c:1".into(),
                epoch: 1,
            },
            now,
        );
        let member = out
            .iter()
            .find_map(|a| match a {
                Action::Accepted { member } => Some(*member),
                _ => None,
            })
            .expect("accepted");
        (member, out)
    }

    /// What a primary needing one ready backup says when it has none.
    const WITHHOLD: Action = Action::Withhold {
        ready: 0,
        needed: 1,
    };

    #[test]
    fn min_backups_withholds_before_a_drop_and_releases_after_readiness() {
        let now = Instant::now();
        let mut n = HaNode::new(
            HaSettings {
                min_backups: 1,
                ..node(now).settings
            },
            now,
        );
        n.handle(Input::LinkFailed { index: 0 }, now);
        let out = n.promote(true, now).expect("first primary");
        assert_eq!(out.first(), Some(&WITHHOLD), "{out:?}");
        assert!(n.withheld().is_some());
        let (member, out) = backup_b2_connects(&mut n, now);
        assert!(!out.iter().any(|a| matches!(a, Action::Release { .. })));
        let out = n.handle(Input::BackupReady { member }, now);
        assert_eq!(out.last(), Some(&Action::Release { ready: 1 }), "{out:?}");
        assert_eq!(n.withheld(), None);
        // Losing it: settlements are withheld at once; its holds are released
        // only once the other broker was probed (here: it did not answer).
        let out = n.handle(Input::BackupLost { member }, now);
        assert_eq!(out.first(), Some(&WITHHOLD), "{out:?}");
        assert!(out.contains(&Action::Probe {
            index: 0,
            address: "a:1".into()
        }));
        assert!(!out.iter().any(|a| matches!(a, Action::DropBackup { .. })));
        let out = n.handle(
            Input::ProbeAnswer {
                index: 0,
                answer: None,
            },
            now,
        );
        assert!(
            out.iter()
                .any(|a| matches!(a, Action::DropBackup { member: m, .. } if *m == member)),
            "{out:?}"
        );
    }

    #[test]
    fn a_primary_steps_down_when_a_probe_finds_a_newer_primary() {
        let now = Instant::now();
        let mut n = node(now);
        n.handle(Input::LinkFailed { index: 0 }, now);
        n.promote(true, now).expect("first primary");
        assert_eq!(n.epoch(), 1);
        let out = n.handle(Input::Tick, now + Duration::from_millis(150));
        assert!(
            out.iter()
                .any(|a| matches!(a, Action::Probe { index: 0, .. })),
            "a primary probes its peers: {out:?}"
        );
        let peer = |epoch, status, id: &str| PeerEpoch {
            broker_id: id.into(),
            epoch,
            status,
        };
        // An older primary, or one of the same epoch with a lesser id, does not
        // outrank us; a backup of our own epoch neither.
        for answer in [
            peer(0, BrokerStatus::Active, "z"),
            peer(1, BrokerStatus::Active, "a"),
            peer(1, BrokerStatus::Ready, "z"),
        ] {
            let out = n.handle(
                Input::ProbeAnswer {
                    index: 0,
                    answer: Some(answer.clone()),
                },
                now,
            );
            assert!(
                !out.iter().any(|a| matches!(a, Action::StepDown { .. })),
                "{answer:?}"
            );
            assert_eq!(n.status(), BrokerStatus::Active);
        }
        // The same epoch, a greater id: two promotions cut off from each other.
        let out = n.handle(Input::ProbedBy(peer(1, BrokerStatus::Active, "b2")), now);
        assert!(
            out.contains(&Action::StepDown { newer_epoch: 1 }),
            "{out:?}"
        );
        assert_eq!(n.status(), BrokerStatus::Joining);
    }

    #[test]
    fn a_promotion_goes_past_the_highest_epoch_the_peers_said() {
        let now = Instant::now();
        let mut n = node(now);
        n.handle(
            Input::PeerStatus {
                address: "a:1".into(),
                status: Some(BrokerStatus::Joining),
                epoch: 5,
            },
            now,
        );
        n.promote(true, now).expect("promoted");
        assert_eq!(n.epoch(), 6);
    }
}
