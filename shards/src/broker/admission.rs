//! Who may connect: everyone, or admin connections only (an HA backup, or a
//! primary that stepped down). Shard 0's extension decides; every shard
//! applies it, closing ordinary clients already connected when it narrows.

use super::{Shard, ShardMsg};
use crate::amqp::performative::{condition, ErrorCondition};

/// Which client connections a broker accepts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Admission {
    /// Everyone (a primary, or a stand-alone broker).
    #[default]
    Open,
    /// Only admin connections (the extension says which are:
    /// [`super::ext::Extension::is_admin`]); ordinary clients are dropped,
    /// which Qpid Proton and rhea treat as "try the next address".
    AdminOnly { reason: String },
}

impl Shard {
    /// Shard 0: who may connect from now on, on every shard.
    pub fn set_admission(&mut self, admission: Admission) {
        if admission == self.admission {
            return;
        }
        for shard in 0..self.shards() {
            if shard != self.id {
                self.send(shard, ShardMsg::Admission(admission.clone()));
            }
        }
        self.apply_admission(admission);
    }

    /// Applies an admission policy: under admin-only, ordinary clients already
    /// connected are closed too (a primary that steps down must drop them).
    pub(super) fn apply_admission(&mut self, admission: Admission) {
        if let Admission::AdminOnly { reason } = &admission {
            // Dropped without a close frame, like a backup's refusal: Proton only
            // moves on promptly after a dropped connection.
            let error = ErrorCondition::new(condition::CONNECTION_FORCED, reason.clone());
            let ids: Vec<u64> = self
                .conns
                .iter()
                .filter(|(_, c)| c.opened && !c.admin)
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.engine.abort(error.clone());
                }
                self.conn_events(id);
            }
        }
        self.admission = admission;
    }

    /// Whether this broker only admits admin connections (it is a backup).
    pub fn admin_only(&self) -> bool {
        matches!(self.admission, Admission::AdminOnly { .. })
    }
}
