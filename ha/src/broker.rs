//! The broker's HA role as shard 0 runs it: an [`HaNode`] behind the
//! `HaHandler` seam of `tandem-shards`. It answers the `ha-broker` management
//! entity (what `tandem-ha status/query` read, `promote`), logs every status
//! change, and tells the shards whom to admit: ordinary clients only when this
//! broker is a primary.

use std::time::Instant;

use tandem_shards::amqp::codec::Value;
use tandem_shards::broker::hooks::{Admission, HaHandler, HaOutcome, HaReply};
use tandem_shards::management::status;

use crate::node::{Action, HaNode, HaSettings, Input};
use crate::status::BrokerStatus;

/// What `query` reports besides the node's own state.
#[derive(Debug, Clone, Default)]
pub struct ClusterInfo {
    pub brokers_url: String,
    pub public_url: String,
    pub replicate: String,
}

pub struct HaBroker {
    node: HaNode,
    info: ClusterInfo,
}

impl HaBroker {
    pub fn new(settings: HaSettings, info: ClusterInfo, now: Instant) -> HaBroker {
        tracing::info!(
            "HA: broker {} joining cluster {} (status {})",
            settings.broker_id,
            info.brokers_url,
            BrokerStatus::Joining
        );
        HaBroker {
            node: HaNode::new(settings, now),
            info,
        }
    }

    fn carry_out(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Status { from, to } => {
                    tracing::info!(
                        "HA: status changed from {from} to {to} (epoch {})",
                        self.node.epoch()
                    );
                }
                Action::StepDown { newer_epoch } => {
                    tracing::warn!(
                        "HA: a newer primary exists (epoch {newer_epoch} > ours): stepping down, dropping clients"
                    );
                }
                Action::DropBackup { reason, .. } => {
                    tracing::warn!("HA: dropping backup: {reason}")
                }
                // The replication links arrive with the replication stream.
                Action::Connect { .. }
                | Action::Disconnect
                | Action::Guard { .. }
                | Action::BroadcastMembers
                | Action::Accepted { .. } => {}
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
            ("brokers-url", Value::string(&self.info.brokers_url)),
            ("public-url", Value::string(&self.info.public_url)),
            ("replicate", Value::string(&self.info.replicate)),
            ("members", Value::List(members)),
        ]
    }

    fn operation(&mut self, operation: &str, body: &Value, now: Instant) -> HaReply {
        match operation {
            "PROMOTE" => {
                let cluster_manager =
                    matches!(body.map_get("cluster-manager"), Some(Value::Bool(true)));
                match self.node.promote(cluster_manager, now) {
                    Ok(actions) => {
                        self.carry_out(actions);
                        Ok(Value::Map(vec![(
                            Value::string("status"),
                            Value::string(self.node.status().as_str()),
                        )]))
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
        }
    }
}
