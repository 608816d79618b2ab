//! Configuration changes as data: what a client or the replication stream asks
//! for ([`ConfigOp`]) and what the ordering point broadcasts once it accepted
//! it ([`ConfigEvent`]). The catalogue applies them; the extension's change tap
//! reports them.

use std::sync::Arc;

use crate::exchange::{Binding, BindingKey, ExchangeType};
use crate::queue::QueueSettings;

/// A requested configuration change.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigOp {
    /// Declare a queue (no-op if it exists); `name: None` generates a temporary
    /// name; `bind` also binds it (private subscription queues).
    DeclareQueue {
        name: Option<String>,
        settings: QueueSettings,
        bind: Option<(String, BindingKey)>,
        /// Management creates are strict: an existing queue declared differently
        /// is a conflict (attaches just use what exists).
        strict: bool,
    },
    DeleteQueue {
        name: String,
        if_unused: bool,
    },
    /// Declare a queue, or give an existing one these settings (a backup applying
    /// its primary's view, e.g. after a delete and re-create it missed).
    ReplaceQueue {
        name: String,
        settings: QueueSettings,
    },
    DeclareExchange {
        name: String,
        kind: ExchangeType,
        durable: bool,
        replicate: Option<String>,
    },
    DeleteExchange {
        name: String,
    },
    Bind {
        exchange: String,
        queue: String,
        key: BindingKey,
    },
    Unbind {
        exchange: String,
        queue: String,
        key: BindingKey,
    },
}

impl ConfigOp {
    /// `Bind`, or `Unbind` when `bind` is false.
    pub fn binding(bind: bool, exchange: String, queue: String, key: BindingKey) -> ConfigOp {
        if bind {
            ConfigOp::Bind {
                exchange,
                queue,
                key,
            }
        } else {
            ConfigOp::Unbind {
                exchange,
                queue,
                key,
            }
        }
    }
}

/// An applied configuration change, as broadcast to every shard.
#[derive(Debug, Clone)]
pub enum ConfigEvent {
    QueueDeclared {
        name: Arc<str>,
        owner: usize,
        settings: QueueSettings,
    },
    QueueDeleted {
        name: Arc<str>,
    },
    ExchangeDeclared {
        name: Arc<str>,
        kind: ExchangeType,
        durable: bool,
        replicate: Option<String>,
    },
    ExchangeDeleted {
        name: Arc<str>,
    },
    Bound {
        exchange: Arc<str>,
        binding: Binding,
    },
    Unbound {
        exchange: Arc<str>,
        binding: Binding,
    },
}
