//! The configuration (queues, exchanges, bindings) as every shard sees it, and its
//! single ordering point on shard 0: requests go there, are validated against the
//! authoritative copy, then broadcast; the requester hears back only after every
//! shard applied the change (a barrier), so a link attached after a declare or a
//! bind sees it on whichever shard its messages are routed.

use hashbrown::HashMap;
use std::sync::Arc;

use super::config::{ConfigEvent, ConfigOp};
use super::{ConfigDone, Shard, ShardMsg};
use crate::amqp::performative::{condition, ErrorCondition};
use crate::exchange::{Binding, BindingKey, Exchange, BUILT_IN};
use crate::placement::shard_of;
use crate::queue::QueueSettings;

/// What a queue is, for routing: its owner and how it was declared.
#[derive(Debug, Clone)]
pub struct QueueEntry {
    pub owner: usize,
    pub settings: QueueSettings,
}

/// Shard 0's record of a change in flight.
pub(super) struct Barrier {
    origin: usize,
    req: u64,
    waiting: usize,
    result: Result<ConfigDone, ErrorCondition>,
}

#[derive(Debug, Clone)]
pub struct Catalogue {
    pub queues: HashMap<Arc<str>, QueueEntry>,
    pub exchanges: HashMap<Arc<str>, Exchange>,
}

impl Default for Catalogue {
    fn default() -> Self {
        Catalogue::new()
    }
}

impl Catalogue {
    pub fn new() -> Catalogue {
        let exchanges = BUILT_IN
            .iter()
            .map(|(name, kind)| (Arc::<str>::from(*name), Exchange::new(name, *kind)))
            .collect();
        Catalogue {
            queues: HashMap::new(),
            exchanges,
        }
    }

    pub fn apply(&mut self, ev: &ConfigEvent) {
        match ev {
            ConfigEvent::QueueDeclared {
                name,
                owner,
                settings,
            } => {
                self.queues.insert(
                    name.clone(),
                    QueueEntry {
                        owner: *owner,
                        settings: settings.clone(),
                    },
                );
            }
            ConfigEvent::QueueDeleted { name } => {
                self.queues.remove(name);
                for ex in self.exchanges.values_mut() {
                    ex.unbind_queue(name);
                }
            }
            ConfigEvent::ExchangeDeclared {
                name,
                kind,
                durable,
                replicate,
            } => {
                self.exchanges
                    .entry(name.clone())
                    .or_insert_with(|| Exchange {
                        durable: *durable,
                        replicate: replicate.clone(),
                        ..Exchange::new(name, *kind)
                    });
            }
            ConfigEvent::ExchangeDeleted { name } => {
                self.exchanges.remove(name);
            }
            ConfigEvent::Bound { exchange, binding } => {
                if let Some(ex) = self.exchanges.get_mut(exchange) {
                    ex.bind(binding.clone());
                }
            }
            ConfigEvent::Unbound { exchange, binding } => {
                if let Some(ex) = self.exchanges.get_mut(exchange) {
                    ex.unbind(binding);
                }
            }
        }
    }

    /// The remote that queue `name` is a replica of, if it is one.
    pub fn replica_of(&self, name: &str) -> Option<&str> {
        self.queues.get(name)?.settings.replica_of.as_deref()
    }

    /// Validates a request against this (authoritative) copy and says what changes.
    pub(super) fn plan(
        &self,
        op: ConfigOp,
        shards: usize,
        temp_name: impl FnOnce() -> String,
    ) -> Result<(Vec<ConfigEvent>, ConfigDone), ErrorCondition> {
        match op {
            ConfigOp::DeclareQueue {
                name,
                settings,
                bind,
                strict,
            } => {
                let name: Arc<str> = name.unwrap_or_else(temp_name).into();
                if name.is_empty() {
                    return Err(ErrorCondition::new(
                        condition::INVALID_FIELD,
                        "a queue name cannot be empty",
                    ));
                }
                if self.exchanges.contains_key(&name) {
                    return Err(ErrorCondition::new(
                        condition::NOT_ALLOWED,
                        format!("'{name}' is an exchange, not a queue"),
                    ));
                }
                let mut events = Vec::new();
                let owner = match self.queues.get(&name) {
                    Some(existing) if strict && existing.settings != settings => {
                        return Err(ErrorCondition::new(
                            condition::PRECONDITION_FAILED,
                            format!("queue '{name}' already exists with different arguments"),
                        ))
                    }
                    Some(existing) => existing.owner,
                    None => {
                        let owner = shard_of(&name, shards);
                        events.push(ConfigEvent::QueueDeclared {
                            name: name.clone(),
                            owner,
                            settings,
                        });
                        owner
                    }
                };
                if let Some((exchange, key)) = bind {
                    let exchange = self.exchange_named(&exchange)?;
                    events.push(ConfigEvent::Bound {
                        exchange,
                        binding: Binding {
                            queue: name.clone(),
                            key,
                        },
                    });
                }
                Ok((
                    events,
                    ConfigDone {
                        queue: Some((name, owner)),
                    },
                ))
            }
            ConfigOp::ReplaceQueue { name, settings } => {
                let name: Arc<str> = name.into();
                if self.exchanges.contains_key(&name) {
                    return Err(ErrorCondition::new(
                        condition::NOT_ALLOWED,
                        format!("'{name}' is an exchange, not a queue"),
                    ));
                }
                let (owner, changed) = match self.queues.get(&name) {
                    Some(existing) => (existing.owner, existing.settings != settings),
                    None => (shard_of(&name, shards), true),
                };
                // A replica's messages come only from its original (at its
                // positions): nothing may route others to it.
                if settings.replica_of.is_some() {
                    if let Some(ex) = self
                        .exchanges
                        .values()
                        .find(|ex| ex.bindings.iter().any(|b| b.queue == name))
                    {
                        return Err(ErrorCondition::new(
                            condition::NOT_ALLOWED,
                            format!(
                                "queue '{name}' is bound to exchange '{}': unbind it before it becomes a replica",
                                ex.name
                            ),
                        ));
                    }
                }
                let events = if changed {
                    vec![ConfigEvent::QueueDeclared {
                        name: name.clone(),
                        owner,
                        settings,
                    }]
                } else {
                    Vec::new()
                };
                Ok((
                    events,
                    ConfigDone {
                        queue: Some((name, owner)),
                    },
                ))
            }
            ConfigOp::DeleteQueue { name, .. } => {
                let Some((name, _)) = self.queues.get_key_value(name.as_str()) else {
                    return Err(ErrorCondition::new(
                        condition::NOT_FOUND,
                        format!("queue '{name}' not found"),
                    ));
                };
                Ok((
                    vec![ConfigEvent::QueueDeleted { name: name.clone() }],
                    ConfigDone { queue: None },
                ))
            }
            ConfigOp::DeclareExchange {
                name,
                kind,
                durable,
                replicate,
            } => {
                if let Some(ex) = self.exchanges.get(name.as_str()) {
                    if ex.kind != kind {
                        return Err(ErrorCondition::new(
                            condition::PRECONDITION_FAILED,
                            format!("exchange '{name}' exists with type {}", ex.kind.as_str()),
                        ));
                    }
                    if ex.durable != durable || ex.replicate != replicate {
                        return Err(ErrorCondition::new(
                            condition::PRECONDITION_FAILED,
                            format!("exchange '{name}' already exists with different arguments"),
                        ));
                    }
                    return Ok((Vec::new(), ConfigDone { queue: None }));
                }
                if self.queues.contains_key(name.as_str()) {
                    return Err(ErrorCondition::new(
                        condition::NOT_ALLOWED,
                        format!("'{name}' is a queue"),
                    ));
                }
                Ok((
                    vec![ConfigEvent::ExchangeDeclared {
                        name: name.into(),
                        kind,
                        durable,
                        replicate,
                    }],
                    ConfigDone { queue: None },
                ))
            }
            ConfigOp::DeleteExchange { name } => {
                if BUILT_IN.iter().any(|(n, _)| *n == name) {
                    return Err(ErrorCondition::new(
                        condition::NOT_ALLOWED,
                        format!("'{name}' is built in"),
                    ));
                }
                let exchange = self.exchange_named(&name)?;
                Ok((
                    vec![ConfigEvent::ExchangeDeleted { name: exchange }],
                    ConfigDone { queue: None },
                ))
            }
            ConfigOp::Bind {
                exchange,
                queue,
                key,
            } => {
                if let Some(remote) = self.replica_of(&queue) {
                    return Err(ErrorCondition::new(
                        condition::NOT_ALLOWED,
                        format!(
                            "queue '{queue}' is a replica of {}: its messages come only from there, so it cannot be bound",
                            crate::url::redacted_text(remote)
                        ),
                    ));
                }
                let (exchange, binding) = self.binding_for(&exchange, &queue, key)?;
                Ok((
                    vec![ConfigEvent::Bound { exchange, binding }],
                    ConfigDone { queue: None },
                ))
            }
            ConfigOp::Unbind {
                exchange,
                queue,
                key,
            } => {
                let (exchange, binding) = self.binding_for(&exchange, &queue, key)?;
                let exists = self
                    .exchanges
                    .get(&exchange)
                    .is_some_and(|ex| ex.bindings.contains(&binding));
                if !exists {
                    return Err(ErrorCondition::new(
                        condition::NOT_FOUND,
                        format!("no such binding of queue '{queue}' to exchange '{exchange}'"),
                    ));
                }
                Ok((
                    vec![ConfigEvent::Unbound { exchange, binding }],
                    ConfigDone { queue: None },
                ))
            }
        }
    }

    /// The exchange and binding a bind/unbind request names, both validated.
    fn binding_for(
        &self,
        exchange: &str,
        queue: &str,
        key: BindingKey,
    ) -> Result<(Arc<str>, Binding), ErrorCondition> {
        let exchange = self.exchange_named(exchange)?;
        let Some((queue, _)) = self.queues.get_key_value(queue) else {
            return Err(ErrorCondition::new(
                condition::NOT_FOUND,
                format!("queue '{queue}' not found"),
            ));
        };
        Ok((
            exchange,
            Binding {
                queue: queue.clone(),
                key,
            },
        ))
    }

    fn exchange_named(&self, name: &str) -> Result<Arc<str>, ErrorCondition> {
        self.exchanges
            .get_key_value(name)
            .map(|(n, _)| n.clone())
            .ok_or_else(|| {
                ErrorCondition::new(condition::NOT_FOUND, format!("exchange '{name}' not found"))
            })
    }
}

impl Shard {
    /// Shard 0: validate, apply here, broadcast, and reply once all shards applied.
    pub(super) fn on_config_request(&mut self, origin: usize, req: u64, op: ConfigOp) {
        let temp = self.next_temp;
        let planned = self
            .catalogue
            .plan(op, self.workers(), || format!("tmp.{}", uuid_like(temp)));
        self.next_temp += 1;
        let (events, done) = match planned {
            Ok(p) => p,
            Err(e) => {
                self.send(
                    origin,
                    ShardMsg::ConfigReply {
                        req,
                        result: Err(e),
                    },
                );
                return;
            }
        };
        for ev in &events {
            self.apply_config(ev);
        }
        let others = self.shards() - 1;
        if events.is_empty() || others == 0 {
            self.raise(super::ext::Tap::Ordered(events.clone()));
            self.send(
                origin,
                ShardMsg::ConfigReply {
                    req,
                    result: Ok(done),
                },
            );
            return;
        }
        let barrier = self.next_barrier;
        self.next_barrier += 1;
        self.barriers.insert(
            barrier,
            Barrier {
                origin,
                req,
                waiting: others,
                result: Ok(done),
            },
        );
        for shard in 1..self.shards() {
            self.send(
                shard,
                ShardMsg::Config {
                    events: events.clone(),
                    barrier,
                },
            );
        }
        // After the broadcast: what the extension sends a shard because of the
        // change (a queue owner told to stream the new queue) must not overtake
        // the change itself on that shard's ring.
        self.raise(super::ext::Tap::Ordered(events));
    }

    pub(super) fn on_config_applied(&mut self, barrier: u64) {
        let Some(b) = self.barriers.get_mut(&barrier) else {
            return;
        };
        b.waiting -= 1;
        if b.waiting == 0 {
            if let Some(b) = self.barriers.remove(&barrier) {
                self.send(
                    b.origin,
                    ShardMsg::ConfigReply {
                        req: b.req,
                        result: b.result,
                    },
                );
            }
        }
    }
}

/// A short unique-enough suffix for temporary names: counter and process start.
fn uuid_like(n: u64) -> String {
    let pid = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{pid:x}-{nanos:08x}-{n}")
}
