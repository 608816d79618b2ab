//! The access-policy seam: one check the shards call when a connection opens,
//! at every attach, for every management operation, and (only when the policy
//! asks for it) for every published message. `tandem-shards` ships
//! [`AllowAll`]; the ACL (module `acl`, qpidd's file syntax) implements
//! [`AccessPolicy`] too. A refusal names the reason and reaches the client with the
//! AMQP condition `amqp:unauthorized-access` (management: status 403).

use std::fmt;

use crate::amqp::codec::Value;

/// Who asks: the authenticated user (`None` before SASL finished, or for a
/// connection without SASL) and where from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal<'a> {
    pub user: Option<&'a str>,
    pub peer: &'a str,
}

/// What is asked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Access<'a> {
    /// Open a connection; the properties of its open frame (a cluster's own
    /// links carry `qpid.ha-backup`, admin tools `qpid.ha-admin`).
    Connect { properties: Option<&'a Value> },
    /// Attach a link that sends to `node` (empty: the anonymous relay).
    Publish { node: &'a str },
    /// Attach a link that receives from `node` (`$ha.replication` included);
    /// `browse` for `distribution-mode = copy`, `dynamic` for a temporary queue.
    Consume {
        node: &'a str,
        browse: bool,
        dynamic: bool,
    },
    /// A management operation (CREATE, READ, DELETE, QUERY, PROMOTE...) on an
    /// entity type (queue, exchange, binding, connection, broker, ha-broker).
    Manage {
        operation: &'a str,
        entity_type: &'a str,
        name: Option<&'a str>,
        /// The request's `durable` attribute, if it has one (a CREATE).
        durable: Option<bool>,
    },
    /// One message published on a link to `node` with routing key `subject`;
    /// asked only of a policy whose [`AccessPolicy::checks_messages`] is true.
    Send {
        node: &'a str,
        subject: Option<&'a str>,
    },
}

/// Decides what a principal may do. Called on the shard that holds the
/// connection, so it must be cheap and must not block.
pub trait AccessPolicy: Send + Sync + fmt::Debug {
    /// `Ok` to allow; `Err(reason)` to refuse, the reason going to the client
    /// and the log.
    fn check(&self, who: &Principal<'_>, what: &Access<'_>) -> Result<(), String>;

    /// Whether [`Access::Send`] is asked for every published message. A
    /// policy that only decides per link leaves it false and costs nothing
    /// per message.
    fn checks_messages(&self) -> bool {
        false
    }

    /// Whether `user` holds the cluster's privileges (`qpid.ha-admin`,
    /// `qpid.ha-backup`, replication, promote), if the policy decides that
    /// (an ACL does); `None` leaves it to the broker's settings.
    fn acts_as_cluster(&self, user: Option<&str>) -> Option<bool> {
        let _ = user;
        None
    }
}

/// Everyone may do everything (the broker without an ACL).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl AccessPolicy for AllowAll {
    fn check(&self, _: &Principal<'_>, _: &Access<'_>) -> Result<(), String> {
        Ok(())
    }
}
