//! The broker's HA role as shard 0 runs it: an [`HaNode`] behind the
//! `HaHandler` seam of `tandem-shards`. It answers the `ha-broker` management
//! entity (what `tandem-ha status/query` read, `promote`), logs every status
//! change, and tells the shards whom to admit: ordinary clients only when this
//! broker is a primary.

use std::time::Instant;

use tandem_shards::amqp::codec::Value;
use tandem_shards::broker::admission::Admission;

use crate::guard::MemberId;
use crate::role::{BackupIdentity, HaCommand, HaHandler, HaOutcome, HaReply, LinkEvent};
use tandem_shards::management::status;

use crate::node::{Action, HaNode, HaSettings, Input, MemberInfo, PeerEpoch};
use crate::status::BrokerStatus;

/// What `query` reports besides the node's own state.
#[derive(Debug, Clone, Default)]
pub struct ClusterInfo {
    pub brokers_url: String,
    pub public_url: String,
    pub replicate: String,
    /// `ha-sync-config`: tools wait for the backups after each change.
    pub sync_config: bool,
    /// This broker's own address, as the others reach it.
    pub self_address: String,
}

pub struct HaBroker {
    node: HaNode,
    info: ClusterInfo,
    /// Commands for the shards, gathered until the next poll.
    commands: Vec<HaCommand>,
    /// The member id of the backup whose attach is being handled.
    accepted: Option<MemberId>,
    /// The foreign cluster we last refused to join (logged once).
    foreign_logged: Option<String>,
    /// Times this broker became primary, and stepped down.
    promotions: u64,
    step_downs: u64,
}

impl HaBroker {
    pub fn new(settings: HaSettings, info: ClusterInfo, now: Instant) -> HaBroker {
        tandem_shards::log_context::set_status(BrokerStatus::Joining.as_str());
        tracing::info!(
            "HA: broker {} joining cluster {} (status {})",
            settings.broker_id,
            info.brokers_url,
            BrokerStatus::Joining
        );
        HaBroker {
            node: HaNode::new(settings, now),
            info,
            commands: Vec::new(),
            accepted: None,
            foreign_logged: None,
            promotions: 0,
            step_downs: 0,
        }
    }

    fn carry_out(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Status { from, to } => {
                    tandem_shards::log_context::set_status(to.as_str());
                    tracing::info!(
                        "HA: status changed from {from} to {to} (epoch {})",
                        self.node.epoch()
                    );
                    if to.is_primary() && !from.is_primary() {
                        self.promotions += 1;
                        let epoch = self.node.epoch();
                        self.commands.push(HaCommand::Promoted { epoch });
                    }
                }
                Action::StepDown { newer_epoch } => {
                    tracing::error!(
                        "HA: a newer primary exists (epoch {newer_epoch} > ours): stepping down, dropping clients; publishes not yet settled stay unsettled"
                    );
                    self.step_downs += 1;
                    self.commands.push(HaCommand::StepDown);
                }
                Action::Withhold { ready, needed } => {
                    tracing::warn!(
                        "HA: {ready} of ha-min-backups {needed} backups ready: settlements of publishes to replicated queues wait until {needed} are"
                    );
                    self.commands.push(HaCommand::Withhold);
                }
                Action::Release { ready } => {
                    tracing::info!(
                        "HA: {ready} backups ready (ha-min-backups {}): settling publishes again",
                        self.node.min_backups()
                    );
                    self.commands.push(HaCommand::Release);
                }
                Action::Connect { index, address } => {
                    self.commands.push(HaCommand::Connect { index, address })
                }
                Action::Disconnect => self.commands.push(HaCommand::Disconnect),
                Action::Guard { member } => self.commands.push(HaCommand::Guard { member }),
                Action::DropBackup {
                    member,
                    reason,
                    disconnect,
                } => {
                    tracing::warn!("HA: dropping backup: {reason}");
                    self.commands.push(HaCommand::Drop { member, disconnect });
                }
                Action::BroadcastMembers => {
                    let members = self
                        .node
                        .members()
                        .into_iter()
                        .map(|m| (m.broker_id, m.address, m.status.as_str().to_owned()))
                        .collect();
                    self.commands.push(HaCommand::Members {
                        epoch: self.node.epoch(),
                        members,
                    });
                }
                Action::Accepted { member } => self.accepted = Some(member),
                Action::Probe { index, address } => {
                    self.commands.push(HaCommand::Probe { index, address })
                }
                Action::ForeignCluster {
                    address,
                    ours,
                    theirs,
                } => {
                    // Once per primary's cluster, not at every retry.
                    if self.foreign_logged.as_deref() != Some(theirs.as_str()) {
                        tracing::error!(
                            "HA: the primary at {address} belongs to cluster {theirs}, but this broker's data-dir belongs to cluster {ours}: not joining it (a broker joins another cluster only with an empty data-dir)"
                        );
                        self.foreign_logged = Some(theirs);
                    }
                }
            }
        }
    }

    fn admission(&self) -> Admission {
        let s = self.node.status();
        if s.is_primary() {
            Admission::Open
        } else {
            Admission::AdminOnly {
                reason: format!("backup broker ({s}), not primary: try another address"),
            }
        }
    }
}

impl HaHandler for HaBroker {
    fn members(&self) -> Vec<crate::node::MemberInfo> {
        self.node.members()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("ha-promotions", self.promotions),
            ("ha-step-downs", self.step_downs),
        ]
    }

    fn attributes(&self) -> Vec<(&'static str, Value)> {
        let members: Vec<Value> = self
            .node
            .members()
            .into_iter()
            .map(|m| {
                Value::Map(vec![
                    (Value::string("broker-id"), Value::String(m.broker_id)),
                    (Value::string("address"), Value::String(m.address)),
                    (Value::string("status"), Value::string(m.status.as_str())),
                ])
            })
            .collect();
        vec![
            ("status", Value::string(self.node.status().as_str())),
            ("broker-id", Value::string(self.node.broker_id())),
            ("epoch", Value::Ulong(self.node.epoch())),
            (
                "cluster-id",
                self.node
                    .cluster_id()
                    .map(Value::string)
                    .unwrap_or(Value::Null),
            ),
            ("brokers-url", Value::string(&self.info.brokers_url)),
            ("public-url", Value::string(&self.info.public_url)),
            ("replicate", Value::string(&self.info.replicate)),
            ("sync-config", Value::Bool(self.info.sync_config)),
            ("min-backups", Value::Ulong(self.node.min_backups() as u64)),
            (
                "ready-backups",
                Value::Ulong(self.node.ready_backups() as u64),
            ),
            (
                "withholding",
                self.node
                    .withheld()
                    .map(Value::String)
                    .unwrap_or(Value::Null),
            ),
            ("members", Value::List(members)),
        ]
    }

    fn operation(&mut self, operation: &str, body: &Value, now: Instant) -> HaReply {
        match operation {
            "PROMOTE" => {
                let cluster_manager =
                    matches!(body.map_get("cluster-manager"), Some(Value::Bool(true)));
                // A broker that was stopped learns so before it answers.
                let noticed = self.node.notice_stop(now);
                self.carry_out(noticed);
                match self.node.promote(cluster_manager, now) {
                    Ok(actions) => {
                        self.carry_out(actions);
                        Ok(Value::Map(vec![(
                            Value::string("status"),
                            Value::string(self.node.status().as_str()),
                        )]))
                    }
                    Err(e @ crate::node::PromoteError::Probing) => {
                        Err((status::SERVICE_UNAVAILABLE, e.to_string()))
                    }
                    Err(e) => {
                        tracing::warn!("HA: promotion refused: {e}");
                        Err((status::CONFLICT, e.to_string()))
                    }
                }
            }
            other => Err((
                status::NOT_IMPLEMENTED,
                format!("operation {other} is not supported on ha-broker (READ, PROMOTE)"),
            )),
        }
    }

    fn poll(&mut self, now: Instant) -> HaOutcome {
        let actions = self.node.handle(Input::Tick, now);
        self.carry_out(actions);
        HaOutcome {
            admission: self.admission(),
            next_poll: self.node.next_deadline(),
            commands: std::mem::take(&mut self.commands),
        }
    }

    fn link_event(&mut self, event: LinkEvent, now: Instant) {
        let input = match event {
            LinkEvent::Up {
                index,
                epoch,
                cluster_id,
            } => {
                tracing::info!("HA: replication link up to {}", self.info.brokers_url);
                Input::LinkUp {
                    index,
                    epoch,
                    cluster_id,
                }
            }
            LinkEvent::Failed { index } => Input::LinkFailed { index },
            LinkEvent::Lost => Input::LinkLost,
            LinkEvent::Diverged => Input::Diverged,
            LinkEvent::PrimaryHeard => Input::PrimaryHeard,
            LinkEvent::PeerStatus {
                index,
                status,
                epoch,
            } => Input::PeerStatus {
                address: self.node.broker_address(index).unwrap_or_default(),
                status: status.parse().ok(),
                epoch,
            },
            LinkEvent::Members { members, .. } => Input::Members(
                members
                    .into_iter()
                    .filter_map(|(broker_id, address, status)| {
                        Some(MemberInfo {
                            broker_id,
                            address,
                            status: status.parse().ok()?,
                        })
                    })
                    .collect(),
            ),
            LinkEvent::BackupReady { member } => Input::BackupReady { member },
            LinkEvent::BackupHeard { member } => Input::BackupHeard { member },
            LinkEvent::BackupLost { member } => Input::BackupLost { member },
            LinkEvent::ProbeAnswer { index, answer } => Input::ProbeAnswer { index, answer },
        };
        let actions = self.node.handle(input, now);
        self.carry_out(actions);
    }

    fn backup_attached(&mut self, who: BackupIdentity, now: Instant) -> Result<MemberId, String> {
        if !self.node.status().is_primary() {
            return Err(format!("not a primary ({})", self.node.status()));
        }
        self.accepted = None;
        let actions = self.node.handle(
            Input::BackupConnected {
                broker_id: who.broker_id.clone(),
                address: who.address.clone(),
                epoch: who.epoch,
            },
            now,
        );
        self.carry_out(actions);
        match self.accepted.take() {
            Some(member) => {
                tracing::info!("HA: backup {} ({}) connected", who.address, who.broker_id);
                Ok(member)
            }
            None => Err(format!(
                "backup {} refused ({})",
                who.address,
                self.node.status()
            )),
        }
    }

    fn identity(&self) -> BackupIdentity {
        BackupIdentity {
            broker_id: self.node.broker_id().to_owned(),
            address: self.info.self_address.clone(),
            epoch: self.node.epoch(),
            replicate: Some(self.info.replicate.clone()),
            probing: None,
        }
    }

    fn probed(&mut self, by: PeerEpoch, now: Instant) -> PeerEpoch {
        let actions = self.node.handle(Input::ProbedBy(by), now);
        self.carry_out(actions);
        PeerEpoch {
            broker_id: self.node.broker_id().to_owned(),
            epoch: self.node.epoch(),
            status: self.node.status(),
        }
    }

    fn status(&self) -> BrokerStatus {
        self.node.status()
    }

    fn ready_members(&self) -> Vec<(MemberId, String)> {
        self.node.ready_member_list()
    }

    fn replicate_default(&self) -> &str {
        &self.info.replicate
    }

    fn cluster_id(&self) -> Option<String> {
        self.node.cluster_id().map(str::to_owned)
    }

    fn epoch(&self) -> u64 {
        self.node.epoch()
    }
}
