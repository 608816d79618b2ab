//! A primary's shard 0: registers each backup link with the HA role, sends the
//! backup the replicated configuration, starts every `all` queue's stream on
//! its owner, streams configuration changes, and carries out the role's
//! commands (guard, drop, membership; on a backup: connect, disconnect).

use hashbrown::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tandem_shards::amqp::codec::Value;
use tandem_shards::amqp::performative::condition;
use tandem_shards::broker::admission::Admission;
use tandem_shards::broker::{ConfigEvent, ConfigOp, Shard};
use tandem_shards::shown::shown;

use super::codec::Event;
use super::{msg, Level, Msg, Names, Refusal, ReplicaSink, Replication};
use crate::guard::MemberId;
use crate::node::PeerEpoch;
use crate::role::{BackupIdentity, HaCommand, HaHandler, LinkEvent};

#[derive(Default)]
pub(super) struct PrimaryState {
    /// Every backup link's sink.
    members: Vec<ReplicaSink>,
    /// `all` queues each backup has not caught up yet.
    pending_ready: HashMap<MemberId, Names>,
    /// Each backup link's broker id.
    broker_ids: HashMap<MemberId, String>,
    /// What catch-up sent each backup (by broker id), since we became primary.
    catch_up: HashMap<String, super::owner::CatchUpCounters>,
}

impl Replication {
    /// A backup attached its link on some shard: register it, send it the
    /// configuration and start every `all` queue's replica.
    pub(super) fn backup_attached(
        &mut self,
        shard: &mut Shard,
        mut sink: ReplicaSink,
        who: BackupIdentity,
        holdings: super::Holdings,
    ) {
        let now = shard.now();
        let refuse = |shard: &mut Shard, condition, reason, us| {
            let refusal = Refusal {
                condition,
                reason,
                us,
            };
            shard.send_ext(sink.shard, msg(Msg::Refused { sink, refusal }));
        };
        let Some(role) = self.role.as_mut() else {
            let reason = "this broker is not in an HA cluster".to_string();
            return refuse(shard, condition::NOT_ALLOWED, reason, None);
        };
        // What a refusal says of us: a joining broker weighs our status
        // before promotion, a primary's epoch probe our epoch.
        let about_us = |role: &dyn HaHandler| {
            Some(PeerEpoch {
                broker_id: role.identity().broker_id,
                epoch: role.epoch(),
                status: role.status(),
            })
        };
        if let Some(theirs) = who.probing.as_deref() {
            // An epoch probe: answered (always by a refusal) after the role
            // heard who asks (a primary it outranks steps down).
            let us = match theirs.parse() {
                Ok(status) => Some(role.probed(
                    PeerEpoch {
                        broker_id: who.broker_id.clone(),
                        epoch: who.epoch,
                        status,
                    },
                    now,
                )),
                Err(_) => about_us(&**role),
            };
            refuse(shard, condition::NOT_ALLOWED, "an epoch probe".into(), us);
            self.poll_role(shard, now);
            return;
        }
        // Brokers that disagree on what is replicated by default would each
        // keep a different set of queues: not one cluster.
        let ours = role.replicate_default().to_owned();
        if let Some(theirs) = who.replicate.as_ref().filter(|r| **r != ours) {
            let reason = format!(
                "ha-replicate differs: this primary replicates '{ours}' by default, backup {} ({}) '{theirs}'; give every broker of the cluster the same ha-replicate",
                shown(&who.address),
                shown(&who.broker_id)
            );
            tracing::debug!("HA: refusing a backup: {reason}");
            let us = about_us(&**role);
            return refuse(shard, condition::PRECONDITION_FAILED, reason, us);
        }
        let broker_id = who.broker_id.clone();
        let member = match role.backup_attached(who, now) {
            Ok(m) => m,
            Err(reason) => {
                let us = about_us(&**role);
                refuse(shard, condition::NOT_ALLOWED, reason, us);
                self.poll_role(shard, now);
                return;
            }
        };
        sink.member = member;
        self.primary.broker_ids.insert(member, broker_id);
        let epoch = self.role.as_ref().map(|h| h.identity().epoch).unwrap_or(0);
        let cluster_id = self.role.as_ref().and_then(|h| h.cluster_id());
        shard.send_ext(
            sink.shard,
            msg(Msg::Accepted {
                sink,
                epoch,
                cluster_id,
            }),
        );
        // The role's guard for the new member goes out before its streams start.
        self.poll_role(shard, now);
        self.primary.members.retain(|s| s.member != member);
        self.primary.members.push(sink);
        // Configuration first: exchanges, then queues (owners start `all` ones).
        let mut events = Vec::new();
        let mut exchanges: Vec<_> = shard.catalogue.exchanges.values().cloned().collect();
        exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        for ex in &exchanges {
            if self.exchange_level(&ex.name, ex.replicate.as_deref()) != Level::None {
                events.push(Event::Config(ConfigOp::DeclareExchange {
                    name: ex.name.to_string(),
                    kind: ex.kind,
                    durable: ex.durable,
                    replicate: ex.replicate.clone(),
                }));
            }
        }
        let mut pending = HashSet::new();
        let mut queues: Vec<_> = shard
            .catalogue
            .queues
            .iter()
            .map(|(n, e)| (n.clone(), e.clone()))
            .collect();
        queues.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, entry) in &queues {
            match self.queue_level(&entry.settings) {
                Level::All => {
                    pending.insert(name.clone());
                    let queue = name.clone();
                    let held = holdings.get(&**name).cloned();
                    shard.send_ext(entry.owner, msg(Msg::StartReplica { queue, sink, held }));
                }
                Level::Configuration => events.push(Event::Config(ConfigOp::ReplaceQueue {
                    name: name.to_string(),
                    settings: entry.settings.clone(),
                })),
                Level::None => {}
            }
        }
        for ex in &exchanges {
            for b in &ex.bindings {
                let queue_replicated = shard
                    .catalogue
                    .queues
                    .get(&b.queue)
                    .is_some_and(|e| self.queue_level(&e.settings) != Level::None);
                if queue_replicated
                    && self.exchange_level(&ex.name, ex.replicate.as_deref()) != Level::None
                {
                    events.push(Event::Config(ConfigOp::Bind {
                        exchange: ex.name.to_string(),
                        queue: b.queue.to_string(),
                        key: b.key.clone(),
                    }));
                }
            }
        }
        events.push(Event::Inventory {
            queues: queues
                .iter()
                .filter(|(_, e)| self.queue_level(&e.settings) != Level::None)
                .map(|(n, _)| n.to_string())
                .collect(),
            exchanges: exchanges
                .iter()
                .filter(|ex| self.exchange_level(&ex.name, ex.replicate.as_deref()) != Level::None)
                .map(|ex| ex.name.to_string())
                .collect(),
        });
        for event in events {
            self.out_to(sink, event.encode_parts(), None);
        }
        if pending.is_empty() {
            self.link_event_to_role(shard, LinkEvent::BackupReady { member });
        } else {
            self.primary.pending_ready.insert(member, pending);
        }
    }

    pub(super) fn queue_caught_up(&mut self, shard: &mut Shard, member: MemberId, queue: Arc<str>) {
        let done = match self.primary.pending_ready.get_mut(&member) {
            Some(set) => {
                set.remove(&queue);
                set.is_empty()
            }
            None => false,
        };
        if done {
            self.primary.pending_ready.remove(&member);
            self.link_event_to_role(shard, LinkEvent::BackupReady { member });
        }
    }

    /// An owner's snapshot for backup `member` sent `sent`.
    pub(super) fn catch_up_sent(&mut self, member: MemberId, sent: super::owner::CatchUpCounters) {
        let Some(id) = self.primary.broker_ids.get(&member) else {
            return;
        };
        self.primary
            .catch_up
            .entry(id.clone())
            .or_default()
            .add(sent);
    }

    /// The role's member list, each with what catch-up sent it.
    pub(super) fn with_catch_up(&self, members: Vec<Value>) -> Vec<Value> {
        members
            .into_iter()
            .map(|m| {
                let sent = m
                    .map_get("broker-id")
                    .and_then(Value::as_str)
                    .and_then(|id| self.primary.catch_up.get(id))
                    .copied()
                    .unwrap_or_default();
                match m {
                    Value::Map(mut entries) => {
                        entries.push((
                            Value::string("catch-up-messages"),
                            Value::Ulong(sent.messages),
                        ));
                        entries.push((Value::string("catch-up-bytes"), Value::Ulong(sent.bytes)));
                        entries.push((Value::string("catch-up-kept"), Value::Ulong(sent.kept)));
                        Value::Map(entries)
                    }
                    other => other,
                }
            })
            .collect()
    }

    /// The link of backup `member`.
    pub(super) fn primary_sink(&self, member: MemberId) -> Option<&ReplicaSink> {
        self.primary.members.iter().find(|s| s.member == member)
    }

    /// Forgets a dropped member's link (shard 0).
    pub(super) fn primary_forget(&mut self, member: MemberId) {
        self.primary.members.retain(|s| s.member != member);
        self.primary.pending_ready.remove(&member);
        self.primary.broker_ids.remove(&member);
    }

    /// Tells the HA role what happened on a link, and applies what it decides.
    pub(super) fn link_event_to_role(&mut self, shard: &mut Shard, event: LinkEvent) {
        let now = shard.now();
        if let Some(ha) = self.role.as_mut() {
            ha.link_event(event, now);
        }
        self.poll_role(shard, now);
    }

    /// Shard 0: lets the HA role run its timers and applies what it decides.
    pub(super) fn poll_role(&mut self, shard: &mut Shard, now: Instant) {
        let Some(ha) = self.role.as_mut() else {
            return;
        };
        let outcome = ha.poll(now);
        let known = crate::epoch_file::Known {
            epoch: ha.epoch(),
            cluster: ha.cluster_id(),
        };
        self.run_commands(shard, outcome.commands);
        let admission = if self.floors_pending > 0 {
            Admission::AdminOnly {
                reason: "promoted, not serving clients yet: retry shortly".into(),
            }
        } else {
            outcome.admission
        };
        shard.set_admission(admission);
        self.persist_epoch(shard, known);
        self.tell_feeds(shard);
    }

    /// Shard 0 of a cluster member: queue replicas' feeds run on the
    /// primary only (a backup gets the replicas' messages from it).
    fn tell_feeds(&mut self, shard: &mut Shard) {
        let Some(ha) = self.role.as_ref() else {
            return;
        };
        if !self.settings.queue_replication {
            return;
        }
        let primary = matches!(
            ha.status(),
            crate::status::BrokerStatus::Recovering | crate::status::BrokerStatus::Active
        );
        if self.feeds_told != Some(primary) {
            self.feeds_told = Some(primary);
            let home = shard.service_shard().unwrap_or(0);
            shard.send_ext(home, msg(Msg::FeedsRun { run: primary }));
        }
    }

    /// A shard raised its position floor after our promotion; once all did,
    /// clients are admitted.
    pub(super) fn floor_raised(&mut self, shard: &mut Shard) {
        self.floors_pending = self.floors_pending.saturating_sub(1);
        if self.floors_pending == 0 {
            let now = shard.now();
            self.poll_role(shard, now);
        }
    }

    /// Keeps the epoch file up to date (written whenever the epoch or the
    /// cluster id changed).
    fn persist_epoch(&mut self, shard: &mut Shard, known: crate::epoch_file::Known) {
        let Some(path) = self.settings.epoch_file.clone() else {
            return;
        };
        if self.persisted.as_ref() != Some(&known) {
            let data = crate::epoch_file::encode(&known);
            self.persisted = Some(known);
            shard.disk(tandem_shards::disk::DiskOp::Replace { path, data });
        }
    }

    /// Shard 0 of a primary: configuration changes the backups must see.
    pub(super) fn stream_config(&mut self, shard: &mut Shard, events: &[ConfigEvent]) {
        if self.primary.members.is_empty() {
            return;
        }
        let sinks = self.primary.members.clone();
        for ev in events {
            let out = match ev {
                ConfigEvent::QueueDeclared {
                    name,
                    owner,
                    settings,
                } => match self.queue_level(settings) {
                    Level::All => {
                        for &sink in &sinks {
                            let queue = name.clone();
                            let held = None;
                            shard.send_ext(*owner, msg(Msg::StartReplica { queue, sink, held }));
                        }
                        None
                    }
                    Level::Configuration => Some(ConfigOp::ReplaceQueue {
                        name: name.to_string(),
                        settings: settings.clone(),
                    }),
                    Level::None => None,
                },
                ConfigEvent::QueueDeleted { name } => Some(ConfigOp::DeleteQueue {
                    name: name.to_string(),
                    if_unused: false,
                }),
                ConfigEvent::ExchangeDeclared {
                    name,
                    kind,
                    durable,
                    replicate,
                } => (self.exchange_level(name, replicate.as_deref()) != Level::None).then(|| {
                    ConfigOp::DeclareExchange {
                        name: name.to_string(),
                        kind: *kind,
                        durable: *durable,
                        replicate: replicate.clone(),
                    }
                }),
                ConfigEvent::ExchangeDeleted { name } => Some(ConfigOp::DeleteExchange {
                    name: name.to_string(),
                }),
                ConfigEvent::Bound { exchange, binding }
                | ConfigEvent::Unbound { exchange, binding } => {
                    let ex_level = shard
                        .catalogue
                        .exchanges
                        .get(exchange)
                        .map(|e| {
                            self.exchange_level(exchange, e.replicate.as_deref()) != Level::None
                        })
                        .unwrap_or(false);
                    let q_level = shard
                        .catalogue
                        .queues
                        .get(&binding.queue)
                        .is_some_and(|e| self.queue_level(&e.settings) != Level::None);
                    (ex_level && q_level).then(|| {
                        ConfigOp::binding(
                            matches!(ev, ConfigEvent::Bound { .. }),
                            exchange.to_string(),
                            binding.queue.to_string(),
                            binding.key.clone(),
                        )
                    })
                }
            };
            if let Some(event) = out.map(|op| Event::Config(op).encode_parts()) {
                for &sink in &sinks {
                    self.out_to(sink, event.clone(), None);
                }
            }
        }
    }

    /// Shard 0: carries out what the HA role decided.
    fn run_commands(&mut self, shard: &mut Shard, commands: Vec<HaCommand>) {
        for c in commands {
            match c {
                HaCommand::Connect { index, address } => {
                    let Some(who) = self.role.as_ref().map(|r| r.identity()) else {
                        continue;
                    };
                    self.link_generation += 1;
                    let generation = self.link_generation;
                    let home = shard.service_shard().unwrap_or(shard.id);
                    shard.send_ext(
                        home,
                        msg(Msg::Connect {
                            index,
                            address,
                            who,
                            generation,
                        }),
                    );
                }
                HaCommand::Disconnect => {
                    self.link_generation += 1;
                    let generation = self.link_generation;
                    let home = shard.service_shard().unwrap_or(shard.id);
                    shard.send_ext(home, msg(Msg::Disconnect { generation }));
                }
                HaCommand::Guard { member } => {
                    for to in 0..shard.shards() {
                        shard.send_ext(to, msg(Msg::GuardMember { member }));
                    }
                }
                HaCommand::Drop { member, disconnect } => {
                    if disconnect {
                        if let Some(&sink) =
                            self.primary.members.iter().find(|s| s.member == member)
                        {
                            shard.send_ext(sink.shard, msg(Msg::CloseLink { sink }));
                        }
                    }
                    for to in 0..shard.shards() {
                        shard.send_ext(to, msg(Msg::DropMember { member }));
                    }
                }
                HaCommand::Probe { index, address } => {
                    let Some(role) = self.role.as_ref() else {
                        continue;
                    };
                    let mut who = role.identity();
                    who.probing = Some(role.status().as_str().to_owned());
                    let home = shard.service_shard().unwrap_or(shard.id);
                    shard.send_ext(
                        home,
                        msg(Msg::Probe {
                            index,
                            address,
                            who,
                        }),
                    );
                }
                HaCommand::Withhold | HaCommand::Release => {
                    for to in 0..shard.shards() {
                        let m = match c {
                            HaCommand::Withhold => Msg::Withhold,
                            _ => Msg::Release,
                        };
                        shard.send_ext(to, msg(m));
                    }
                }
                HaCommand::StepDown => {
                    for sink in std::mem::take(&mut self.primary.members) {
                        shard.send_ext(sink.shard, msg(Msg::CloseLink { sink }));
                    }
                    self.primary.pending_ready.clear();
                    for to in 0..shard.shards() {
                        shard.send_ext(to, msg(Msg::SteppedDown));
                    }
                }
                HaCommand::Promoted { epoch } => {
                    let floor = super::epoch_floor(epoch);
                    tracing::info!(
                        "HA: promoted at epoch {epoch}: new messages get positions from {floor} on"
                    );
                    self.floors_pending = shard.shards();
                    for to in 0..shard.shards() {
                        shard.send_ext(to, msg(Msg::RaiseFloor { floor }));
                    }
                }
                HaCommand::Members { epoch, members } => {
                    let event = Event::Members { epoch, members }.encode_parts();
                    for sink in self.primary.members.clone() {
                        self.out_to(sink, event.clone(), None);
                    }
                }
            }
        }
    }
}
