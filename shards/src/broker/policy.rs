//! Where the shard asks the access policy ([`crate::access`]): the checks
//! themselves, and how a refusal is logged. Callers turn the error into the
//! refusal their protocol step needs (close, refused attach, 403, rejected
//! delivery).

use bytes::Bytes;

use super::conn::Dest;
use super::Shard;
use crate::access::{Access, Principal};
use crate::amqp::message;
use crate::amqp::performative::{condition, ErrorCondition};

impl Shard {
    /// Asks the access policy on behalf of connection `id`.
    pub(super) fn allowed(&self, id: u64, what: &Access<'_>) -> Result<(), ErrorCondition> {
        let Some(c) = self.conns.get(&id) else {
            return Ok(());
        };
        let who = Principal {
            user: c.user.as_deref(),
            peer: &c.peer,
        };
        self.settings.access.check(&who, what).map_err(|why| {
            // Debug formatting escapes what a client chose (user names).
            tracing::info!(conn = id, peer = %c.peer, user = ?c.user.as_deref().map(crate::shown::shown), "access refused: {why:?}");
            ErrorCondition::new(condition::UNAUTHORIZED_ACCESS, why)
        })
    }

    /// Per-message check, for a policy that asks for one: may connection `id`
    /// send this message through `dest`?
    pub(super) fn may_send(
        &self,
        id: u64,
        dest: &Dest,
        payload: &Bytes,
    ) -> Result<(), ErrorCondition> {
        if !self.checks_messages {
            return Ok(());
        }
        let subject = message::scan(payload)
            .ok()
            .and_then(|map| message::subject(payload, &map).ok().flatten());
        let to;
        let node = match dest {
            Dest::Queue { name, .. } => &**name,
            Dest::Exchange(ex) => &**ex,
            Dest::Management => crate::management::NODE,
            Dest::Anonymous => {
                to = message::to_address(payload).unwrap_or_default();
                to.as_str()
            }
        };
        self.allowed(
            id,
            &Access::Send {
                node,
                subject: subject.as_deref(),
            },
        )
    }
}
