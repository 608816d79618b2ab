//! A simulated cluster: three [`HaNode`]s, a virtual clock and an in-memory
//! network, driven step by step the way the runtime will drive them. Links,
//! heartbeats, catch-up and backup acknowledgements are modelled; the primary
//! holds publish settlements in a [`SettlementGuard`]. The scenarios are those of
//! qpidd's HA suite that concern roles and settlement, and run in milliseconds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_ha::guard::{MemberId, SettlementGuard};
use tandem_ha::node::{Action, HaNode, HaSettings, Input, PromoteError};
use tandem_ha::status::BrokerStatus;

const STEP: Duration = Duration::from_millis(10);
const HEARTBEAT: Duration = Duration::from_millis(500);
const BACKUP_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Health {
    Up,
    /// SIGSTOP: alive but silent.
    Stalled,
    Dead,
}

struct Sim {
    now: Instant,
    nodes: Vec<HaNode>,
    health: Vec<Health>,
    /// backup index -> (primary index, member id at the primary)
    links: HashMap<usize, (usize, MemberId)>,
    /// Per primary: held settlements of queue "q" (token = sequence number).
    guards: HashMap<usize, SettlementGuard<u64>>,
    /// Per primary: next position of queue "q".
    positions: HashMap<usize, u64>,
    settled: Vec<u64>,
    published: u64,
    /// Backups whose link the primary closed; they notice when they run.
    severed: Vec<usize>,
    log: Vec<String>,
}

fn q() -> Arc<str> {
    "q".into()
}

fn addr(i: usize) -> String {
    format!("node{i}:5672")
}

impl Sim {
    fn new(n: usize) -> Sim {
        let now = Instant::now();
        let brokers: Vec<String> = (0..n).map(addr).collect();
        let nodes = (0..n)
            .map(|i| {
                HaNode::new(
                    HaSettings {
                        broker_id: format!("broker-{i}"),
                        brokers: brokers.clone(),
                        backup_timeout: BACKUP_TIMEOUT,
                        heartbeat: HEARTBEAT,
                        maintenance: Duration::from_millis(100),
                        own_address: None,
                    },
                    now,
                )
            })
            .collect();
        Sim {
            now,
            nodes,
            health: vec![Health::Up; n],
            links: HashMap::new(),
            guards: HashMap::new(),
            positions: HashMap::new(),
            settled: Vec::new(),
            published: 0,
            severed: Vec::new(),
            log: Vec::new(),
        }
    }

    fn status(&self, i: usize) -> BrokerStatus {
        self.nodes[i].status()
    }

    fn statuses(&self) -> Vec<BrokerStatus> {
        (0..self.nodes.len()).map(|i| self.status(i)).collect()
    }

    fn promote(&mut self, i: usize) -> Result<(), PromoteError> {
        let actions = self.nodes[i].promote(true, self.now)?;
        self.apply(i, actions);
        Ok(())
    }

    /// Carries out a node's actions against the simulated world.
    fn apply(&mut self, i: usize, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Status { from, to } => self.log.push(format!("{i}: {from} -> {to}")),
                Action::Connect { index, .. } => self.connect(i, index),
                Action::Disconnect => {
                    self.links.remove(&i);
                }
                Action::Guard { member } => {
                    let next = *self.positions.entry(i).or_insert(1);
                    self.guards.entry(i).or_default().guard(&q(), member, next);
                }
                Action::DropBackup {
                    member,
                    reason,
                    disconnect,
                } => {
                    self.log.push(format!("{i}: drop {member}: {reason}"));
                    if disconnect {
                        let cut: Vec<usize> = self
                            .links
                            .iter()
                            .filter(|(_, (p, m))| *p == i && *m == member)
                            .map(|(b, _)| *b)
                            .collect();
                        for b in cut {
                            self.links.remove(&b);
                            self.severed.push(b);
                        }
                    }
                    let mut out = Vec::new();
                    self.guards
                        .entry(i)
                        .or_default()
                        .drop_backup(member, &mut out);
                    self.settled.extend(out);
                }
                Action::BroadcastMembers => {
                    let members = self.nodes[i].members();
                    let backups: Vec<usize> = self
                        .links
                        .iter()
                        .filter(|(_, (p, _))| *p == i)
                        .map(|(b, _)| *b)
                        .collect();
                    for b in backups {
                        if self.health[b] == Health::Up {
                            let acts =
                                self.nodes[b].handle(Input::Members(members.clone()), self.now);
                            self.apply(b, acts);
                        }
                    }
                }
                Action::StepDown { newer_epoch } => {
                    self.log
                        .push(format!("{i}: step down for epoch {newer_epoch}"));
                }
                Action::Accepted { .. } => {}
            }
        }
    }

    fn connect(&mut self, backup: usize, index: usize) {
        let target = index;
        let reachable = self.health[target] == Health::Up && target != backup;
        if reachable && self.nodes[target].status().is_primary() {
            let input = Input::BackupConnected {
                broker_id: self.nodes[backup].broker_id().to_owned(),
                address: addr(backup),
                epoch: self.nodes[backup].epoch(),
            };
            let acts = self.nodes[target].handle(input, self.now);
            let member = acts.iter().find_map(|a| match a {
                Action::Accepted { member } => Some(*member),
                _ => None,
            });
            self.apply(target, acts);
            if let Some(member) = member {
                self.links.insert(backup, (target, member));
                let epoch = self.nodes[target].epoch();
                let acts = self.nodes[backup].handle(Input::LinkUp { index, epoch }, self.now);
                self.apply(backup, acts);
                return;
            }
        }
        let acts = self.nodes[backup].handle(Input::LinkFailed { index }, self.now);
        self.apply(backup, acts);
    }

    /// The primary accepts a publish; it is settled when the guard lets it go.
    fn publish(&mut self, primary: usize) {
        self.published += 1;
        let pos = self.positions.entry(primary).or_insert(1);
        let position = *pos;
        *pos += 1;
        let token = self.published;
        if let Some(t) = self
            .guards
            .entry(primary)
            .or_default()
            .enqueued(&q(), position, token)
        {
            self.settled.push(t);
        }
    }

    /// One step of virtual time: heartbeats, acks and catch-up on live links, then ticks.
    fn step(&mut self) {
        self.now += STEP;
        let (awake, asleep): (Vec<usize>, Vec<usize>) = self
            .severed
            .drain(..)
            .partition(|b| self.health[*b] == Health::Up);
        self.severed = asleep;
        for b in awake {
            let acts = self.nodes[b].handle(Input::LinkLost, self.now);
            self.apply(b, acts);
        }
        let links: Vec<(usize, (usize, MemberId))> =
            self.links.iter().map(|(b, l)| (*b, *l)).collect();
        for (b, (p, member)) in links {
            if self.health[p] == Health::Dead {
                // The socket dies with the process: the backup notices at once.
                self.links.remove(&b);
                if self.health[b] == Health::Up {
                    let acts = self.nodes[b].handle(Input::LinkLost, self.now);
                    self.apply(b, acts);
                }
                continue;
            }
            if self.health[b] == Health::Dead {
                self.links.remove(&b);
                let acts = self.nodes[p].handle(Input::BackupLost { member }, self.now);
                self.apply(p, acts);
                continue;
            }
            if self.health[p] == Health::Up && self.health[b] == Health::Up {
                let acts = self.nodes[b].handle(Input::PrimaryHeard, self.now);
                self.apply(b, acts);
                let acts = self.nodes[p].handle(Input::BackupHeard { member }, self.now);
                self.apply(p, acts);
                // Replication keeps up: the backup acknowledges everything so far.
                let upto = self.positions.get(&p).copied().unwrap_or(1) - 1;
                let mut out = Vec::new();
                self.guards
                    .entry(p)
                    .or_default()
                    .acked("q", member, upto, &mut out);
                self.settled.extend(out);
                if self.nodes[b].status() == BrokerStatus::CatchUp {
                    let acts = self.nodes[b].handle(Input::CaughtUp, self.now);
                    self.apply(b, acts);
                    let acts = self.nodes[p].handle(Input::BackupReady { member }, self.now);
                    self.apply(p, acts);
                }
            }
        }
        for i in 0..self.nodes.len() {
            if self.health[i] == Health::Up {
                let acts = self.nodes[i].handle(Input::Tick, self.now);
                self.apply(i, acts);
            }
        }
    }

    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    fn held(&self, primary: usize) -> usize {
        self.guards.get(&primary).map_or(0, |g| g.held_total())
    }
}

use BrokerStatus::*;

/// Three brokers start joining; 0 is promoted; the others become ready.
fn running_cluster() -> Sim {
    let mut sim = Sim::new(3);
    assert_eq!(sim.statuses(), vec![Joining, Joining, Joining]);
    assert_eq!(
        sim.promote(0).err(),
        Some(PromoteError::Probing),
        "it has not heard from its peers yet"
    );
    assert!(sim.run_until(Duration::from_secs(1), |s| s.nodes[0].probed_all()));
    sim.promote(0)
        .expect("first primary of an all-joining cluster");
    assert!(sim.run_until(Duration::from_secs(2), |s| s.statuses()
        == vec![Active, Ready, Ready]));
    sim
}

#[test]
fn first_primary_of_an_all_joining_cluster_then_two_ready_backups() {
    let sim = running_cluster();
    let members = sim.nodes[0].members();
    assert_eq!(members.len(), 2);
    assert!(members.iter().all(|m| m.status == Ready));
    // Backups learn the membership, including their own readiness.
    assert!(sim.nodes[1]
        .members()
        .iter()
        .any(|m| m.broker_id == "broker-1" && m.status == Ready));
}

#[test]
fn promotion_is_refused_without_cluster_manager_and_while_catching_up() {
    let mut sim = Sim::new(3);
    assert_eq!(
        sim.nodes[0].promote(false, sim.now).err(),
        Some(PromoteError::NotClusterManager)
    );
    assert!(sim.run_until(Duration::from_secs(1), |s| s.nodes[0].probed_all()));
    sim.promote(0).expect("promote");
    // Broker 1 links up during a step and catches up in the next one: look
    // between the two.
    assert!(sim.run_until(Duration::from_secs(1), |s| s.status(1) == CatchUp));
    assert_eq!(
        sim.nodes[1].promote(true, sim.now).err(),
        Some(PromoteError::CatchingUp)
    );
}

#[test]
fn joining_broker_refuses_promotion_while_a_ready_backup_exists() {
    let mut sim = running_cluster();
    // Broker 2 restarts: a fresh joining node that has probed its peers.
    sim.nodes[2] = HaNode::new(
        HaSettings {
            broker_id: "broker-2b".into(),
            brokers: (0..3).map(addr).collect(),
            backup_timeout: BACKUP_TIMEOUT,
            heartbeat: HEARTBEAT,
            maintenance: Duration::from_millis(100),
            own_address: None,
        },
        sim.now,
    );
    sim.links.remove(&2);
    let now = sim.now;
    sim.nodes[2].handle(
        Input::PeerStatus {
            address: addr(1),
            status: Some(Ready),
        },
        now,
    );
    assert!(matches!(
        sim.nodes[2].promote(true, now),
        Err(PromoteError::JoiningActiveCluster(_))
    ));
}

#[test]
fn failover_waits_for_the_expected_backup_and_survives_n_minus_one_failures() {
    let mut sim = running_cluster();
    for _ in 0..10 {
        sim.publish(0);
    }
    sim.step();
    assert_eq!(sim.settled.len(), 10, "backups acknowledged everything");

    // kill -9 the primary; promote ready backup 1.
    sim.health[0] = Health::Dead;
    sim.step();
    assert_eq!(
        sim.statuses()[1..],
        [Ready, Ready],
        "ready backups stay ready without a primary"
    );
    sim.promote(1).expect("1 was ready");
    assert_eq!(sim.status(1), Recovering, "waits for expected backup 2");
    // Publishes during recovery are held for broker 2 until it is back and ready.
    sim.publish(1);
    assert_eq!(sim.held(1), 1);
    assert!(
        sim.run_until(Duration::from_secs(2), |s| s.status(1) == Active
            && s.status(2) == Ready)
    );
    sim.step();
    assert_eq!(sim.held(1), 0);
    assert_eq!(sim.settled.len(), 11);

    // Second failure in succession: kill 1, promote 2, which now has no backups.
    sim.health[1] = Health::Dead;
    sim.step();
    sim.promote(2).expect("2 was ready");
    assert!(sim.run_until(Duration::from_secs(5), |s| s.status(2) == Active));
    sim.publish(2);
    assert_eq!(
        sim.settled.len(),
        12,
        "a primary without backups settles at once"
    );
}

#[test]
fn an_expected_backup_that_never_returns_is_dropped_after_backup_timeout() {
    let mut sim = running_cluster();
    sim.health[0] = Health::Dead;
    sim.health[2] = Health::Dead;
    sim.step();
    sim.promote(1).expect("promote");
    sim.publish(1);
    assert_eq!(sim.held(1), 1, "held for expected backup 2");
    let promoted_at = sim.now;
    assert!(sim.run_until(BACKUP_TIMEOUT * 2, |s| s.status(1) == Active));
    let waited = sim.now.duration_since(promoted_at);
    assert!(waited >= BACKUP_TIMEOUT, "went active after {waited:?}");
    assert_eq!(sim.held(1), 0);
    assert_eq!(sim.settled, vec![1]);
}

#[test]
fn a_stalled_backup_holds_settlements_until_twice_the_heartbeat() {
    let mut sim = running_cluster();
    sim.health[2] = Health::Stalled;
    let stalled_at = sim.now;
    sim.publish(0);
    sim.step();
    assert_eq!(sim.held(0), 1, "backup 2 has not acknowledged");
    assert!(sim.run_until(HEARTBEAT * 4, |s| s.held(0) == 0));
    let waited = sim.now.duration_since(stalled_at);
    assert!(waited > HEARTBEAT * 2, "released after {waited:?}");
    assert_eq!(sim.settled, vec![1]);
    // Resumed, it rejoins and becomes ready again.
    sim.health[2] = Health::Up;
    let ok = sim.run_until(Duration::from_secs(5), |s| {
        s.status(2) == Ready
            && s.nodes[0]
                .members()
                .iter()
                .filter(|m| m.status == Ready)
                .count()
                == 2
    });
    assert!(
        ok,
        "{:?} {:?} {:?}",
        sim.statuses(),
        sim.nodes[0].members(),
        sim.log
    );
    assert!(
        sim.run_until(Duration::from_secs(5), |s| s.status(2) == Ready
            && s.nodes[0]
                .members()
                .iter()
                .filter(|m| m.status == Ready)
                .count()
                == 2)
    );
}

#[test]
fn a_stale_primary_steps_down_when_a_backup_of_a_newer_primary_connects() {
    let mut sim = running_cluster();
    // Partition: 0 is cut off and believed dead; 1 is promoted (epoch 2).
    sim.health[0] = Health::Stalled;
    sim.links.clear();
    let now = sim.now;
    for b in [1, 2] {
        let acts = sim.nodes[b].handle(Input::LinkLost, now);
        sim.apply(b, acts);
    }
    sim.promote(1).expect("promote");
    assert!(
        sim.run_until(Duration::from_secs(2), |s| s.status(1) == Active
            && s.status(2) == Ready)
    );
    assert!(sim.nodes[1].epoch() > sim.nodes[0].epoch());
    // 0 comes back still primary; broker 2's link reaches it with the newer epoch.
    sim.health[0] = Health::Up;
    let input = Input::BackupConnected {
        broker_id: "broker-2".into(),
        address: addr(2),
        epoch: sim.nodes[2].epoch(),
    };
    let acts = sim.nodes[0].handle(input, sim.now);
    assert!(acts.iter().any(|a| matches!(a, Action::StepDown { .. })));
    sim.apply(0, acts);
    assert_eq!(sim.status(0), Joining, "no second primary");
    assert!(sim.log.iter().any(|l| l.contains("step down")));
}

#[test]
fn every_status_change_is_reported() {
    let sim = running_cluster();
    let changes: BTreeMap<&str, usize> = sim.log.iter().fold(BTreeMap::new(), |mut m, l| {
        *m.entry(l.split(':').next().unwrap_or("")).or_default() += 1;
        m
    });
    // 0: joining -> recovering -> active; 1 and 2: joining -> catch-up -> ready.
    assert_eq!(changes.get("0"), Some(&2));
    assert_eq!(changes.get("1"), Some(&2));
    assert_eq!(changes.get("2"), Some(&2));
}
