//! Synchronous configuration (`tandem-config --sync`): after a change, the
//! tool asks the primary to `SYNC`; shard 0 sends a marker event to every
//! backup that is ready at that moment, behind everything already streamed to
//! it, and answers an id. A backup settles the marker only once it applied
//! every event before it, and the settlement comes back to shard 0 like an
//! acknowledgement (under the pseudo-queue [`SYNC_MARK`]). `SYNC-STATUS`
//! with the id says whether all confirmed, and which have not.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use tandem_shards::amqp::codec::Value;
use tandem_shards::broker::Shard;
use tandem_shards::management::{status, Response};

use super::codec::Event;
use super::Replication;
use crate::guard::MemberId;

/// The name acknowledgements of sync markers travel under (no queue has it:
/// a queue name cannot hold a NUL).
pub(crate) const SYNC_MARK: &str = "\u{0}ha-sync";

/// How long an unanswered sync is remembered.
const FORGET_AFTER: Duration = Duration::from_secs(600);

#[derive(Default)]
pub(super) struct SyncState {
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
}

struct Pending {
    asked: Instant,
    /// Backups yet to confirm: member -> address.
    waiting: HashMap<MemberId, String>,
}

impl Replication {
    /// Shard 0, `SYNC` on ha-broker: a marker to every ready backup.
    pub(super) fn sync_request(&mut self, shard: &mut Shard) -> Response {
        let now = shard.now();
        let Some(role) = self.role.as_ref() else {
            return Response::error(status::NOT_FOUND, "this broker is not in an HA cluster");
        };
        if !role.status().is_primary() {
            return Response::error(
                status::CONFLICT,
                format!("not a primary ({}): ask the primary", role.status()),
            );
        }
        let ready = role.ready_members();
        self.sync
            .pending
            .retain(|_, p| now.saturating_duration_since(p.asked) < FORGET_AFTER);
        self.sync.next_id += 1;
        let id = self.sync.next_id;
        let mut waiting = HashMap::new();
        for (member, address) in ready {
            let Some(&sink) = self.primary_sink(member) else {
                continue;
            };
            let mark = Some((SYNC_MARK.into(), id));
            self.out_to(sink, Event::Sync { id }.encode_parts(), mark);
            waiting.insert(member, address);
        }
        let backups = waiting.len() as u64;
        self.sync.pending.insert(
            id,
            Pending {
                asked: now,
                waiting,
            },
        );
        Response::ok(Value::Map(vec![
            (Value::string("id"), Value::Ulong(id)),
            (Value::string("backups"), Value::Ulong(backups)),
        ]))
    }

    /// `SYNC-STATUS` with `{"id": N}`: `done`, and the backups that have not
    /// confirmed (`missing`, their addresses).
    pub(super) fn sync_status(&mut self, body: &Value) -> Response {
        let Some(id) = body.map_get("id").and_then(Value::as_u64) else {
            return Response::error(status::BAD_REQUEST, "SYNC-STATUS needs the id SYNC gave");
        };
        let Some(p) = self.sync.pending.get(&id) else {
            return Response::error(status::NOT_FOUND, format!("no sync {id} (forgotten?)"));
        };
        let mut missing: Vec<&String> = p.waiting.values().collect();
        missing.sort();
        let done = missing.is_empty();
        let missing = missing.into_iter().map(|a| Value::string(a)).collect();
        if done {
            self.sync.pending.remove(&id);
        }
        Response::ok(Value::Map(vec![
            (Value::string("done"), Value::Bool(done)),
            (Value::string("missing"), Value::List(missing)),
        ]))
    }

    /// Shard 0: `member` settled every sync marker up to `upto`.
    pub(super) fn sync_acked(&mut self, member: MemberId, upto: u64) {
        for (_, p) in self.sync.pending.range_mut(..=upto) {
            p.waiting.remove(&member);
        }
    }
}
