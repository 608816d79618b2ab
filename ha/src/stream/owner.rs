//! A primary's queue owners: each replicated queue is tapped once a backup
//! streams it; a backup gets the queue's snapshot and then every enqueue and
//! dequeue; publishers' settlements wait for every backup holding the queue
//! (one settlement holder per backup link) and are released as the backup
//! acknowledges positions.
//!
//! The snapshot is what the backup lacks. A backup that said what it holds
//! when it attached (its positions of each queue) gets `queue-sync`: keep
//! those positions we still have, drop the rest, then `enq` events for ours
//! it lacks. Any other gets `queue-reset` and every message. A position names
//! one message across the cluster (see `Shard::raise_position_floor`), so
//! equal positions are equal messages.

use hashbrown::{HashMap, HashSet};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tandem_shards::amqp::performative::{condition, ErrorCondition};
use tandem_shards::broker::{ConfigEvent, Shard};
use tandem_shards::duration::format_duration;
use tandem_shards::ranges;

use super::codec::{Encoded, Event};
use super::{msg, EnqueueMeta, Level, Msg, ReplicaSink, Replication};
use crate::guard::{MemberId, MIN_BACKUPS};

#[derive(Default)]
pub(super) struct OwnerState {
    /// Backups streaming each owned queue.
    sinks: HashMap<Arc<str>, Vec<ReplicaSink>>,
    /// Position a backup must acknowledge to have caught up a queue, and
    /// the position it then has everything up to (the queue's last when its
    /// catch-up began: what it lacked was sent, the rest it held already).
    catch_up: HashMap<(MemberId, Arc<str>), (u64, u64)>,
    /// Backups that settlements wait for, so that a queue created later waits
    /// for them too (an expected backup without a link yet has no stream to
    /// start the queue's hold).
    guarded: HashSet<MemberId>,
    /// What snapshots sent and what backups already held.
    pub(super) catch_up_sent: CatchUpCounters,
    /// While too few backups are ready: the settlements withheld, oldest
    /// first, each with when it began to wait (see [`MIN_BACKUPS`]).
    withheld: Option<VecDeque<(Instant, Arc<str>, u64)>>,
}

/// Messages (and their bytes) snapshots sent to backups, and messages the
/// backups kept because they held them already.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CatchUpCounters {
    pub(crate) messages: u64,
    pub(crate) bytes: u64,
    pub(crate) kept: u64,
}

impl CatchUpCounters {
    pub(crate) fn add(&mut self, other: CatchUpCounters) {
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.kept += other.kept;
    }
}

impl Replication {
    /// A message stored on an owned queue: streamed to its backups, and
    /// timed if its settlement is withheld for want of ready backups.
    pub(super) fn owned_stored(
        &mut self,
        shard: &Shard,
        queue: &Arc<str>,
        position: u64,
        message: Bytes,
    ) {
        if let Some(withheld) = self.owner.withheld.as_mut() {
            if shard.holds(MIN_BACKUPS, queue) {
                withheld.push_back((shard.now(), queue.clone(), position));
            }
        }
        self.stream_enqueue(queue, position, message);
    }

    /// Sends a new message to the backups streaming `queue`.
    fn stream_enqueue(&mut self, queue: &Arc<str>, position: u64, message: Bytes) {
        if self.owner.sinks.contains_key(queue) {
            let event = Encoded::enqueue(queue, position, message);
            self.stream_to_backups(queue, event, Some((queue.clone(), position)));
        }
    }

    /// Sends what left `queue` to its backups.
    pub(super) fn stream_dequeues(&mut self, queue: &Arc<str>, gone: Vec<u64>) {
        if self.owner.sinks.contains_key(queue) {
            self.stream_to_backups(queue, Encoded::dequeue(queue, &gone), None);
        }
    }

    /// Sends one event to every backup streaming `queue`.
    fn stream_to_backups(&mut self, queue: &Arc<str>, event: Encoded, meta: EnqueueMeta) {
        let Some(sinks) = self.owner.sinks.get(queue) else {
            return;
        };
        for sink in sinks.clone() {
            self.out_to(sink, event.clone(), meta.clone());
        }
    }

    /// A backup starts replicating `queue`: what it lacks of the snapshot,
    /// then live events. `held`: the positions it said it holds, if it did.
    pub(super) fn start_replica(
        &mut self,
        shard: &mut Shard,
        queue: Arc<str>,
        sink: ReplicaSink,
        held: Option<Vec<(u64, u64)>>,
    ) {
        // Another broker's copy of one queue: nothing waits for it, and
        // it hears where its catch-up ends (it has no HA role to tell).
        let replica = crate::guard::is_queue_replica(sink.member);
        let Some(q) = shard.queue(&queue) else {
            if replica {
                // Deleted meanwhile: the replica hears so when it attaches again.
                shard.send_ext(sink.shard, msg(Msg::CloseLink { sink }));
                return;
            }
            // Deleted meanwhile: nothing to catch up.
            let member = sink.member;
            shard.send_ext(0, msg(Msg::QueueCaughtUp { member, queue }));
            return;
        };
        let settings = q.settings.clone();
        let next = q.next_position();
        let mut snapshot = q.snapshot();
        shard.tap_queue(&queue);
        if !replica {
            hold_for_backup(shard, &queue, sink.member);
        }
        let mut kept_now = 0;
        let start = match held {
            Some(held) => {
                let total = snapshot.len();
                let keep = ranges::from_sorted(
                    snapshot
                        .iter()
                        .map(|(p, _)| *p)
                        .filter(|p| ranges::contains(&held, *p)),
                );
                snapshot.retain(|(p, _)| !ranges::contains(&held, *p));
                let kept = ranges::count(&keep);
                kept_now = kept;
                let who = match replica {
                    true => "a replica".to_string(),
                    false => format!("backup {}", sink.member),
                };
                tracing::info!(
                    "HA: {who} holds {kept} of the {total} messages of queue '{queue}' (and {} we no longer have): sending {}",
                    ranges::count(&held).saturating_sub(kept),
                    snapshot.len()
                );
                Event::QueueSync {
                    name: queue.to_string(),
                    settings,
                    next,
                    keep,
                }
            }
            None => Event::QueueReset {
                name: queue.to_string(),
                settings,
            },
        };
        let sent = CatchUpCounters {
            messages: snapshot.len() as u64,
            bytes: snapshot.iter().map(|(_, m)| m.len() as u64).sum::<u64>(),
            kept: kept_now,
        };
        if !replica {
            self.owner.catch_up_sent.add(sent);
            // And per backup, on shard 0.
            let member = sink.member;
            shard.send_ext(0, msg(Msg::CatchUpSent { member, sent }));
        }
        let last = snapshot.last().map(|(p, _)| *p);
        let enqueues = snapshot.into_iter().map(|(position, message)| {
            (
                Encoded::enqueue(&queue, position, message),
                Some((queue.clone(), position)),
            )
        });
        for (event, meta) in std::iter::once((start.encode_parts(), None)).chain(enqueues) {
            self.out_to(sink, event, meta);
        }
        let sinks = self.owner.sinks.entry(queue.clone()).or_default();
        sinks.retain(|s| s.member != sink.member);
        sinks.push(sink);
        if replica {
            // A marker that the backups never get: the catch-up ends here.
            self.out_to(sink, Event::Sync { id: 0 }.encode_parts(), None);
            return;
        }
        // Once the backup has what it lacked, it has every message before
        // `next`. What it held already, its acknowledgements may never have
        // reached us (they were lost with its last link), so the release up
        // to there comes from that, not from an acknowledgement.
        let through = next.saturating_sub(1);
        match last {
            Some(target) => {
                self.owner
                    .catch_up
                    .insert((sink.member, queue), (target, through));
            }
            None => {
                let member = sink.member;
                shard.release(&queue, member, through);
                shard.send_ext(0, msg(Msg::QueueCaughtUp { member, queue }));
            }
        }
    }

    /// A backup has `queue` up to `position`.
    pub(super) fn acked(
        &mut self,
        shard: &mut Shard,
        queue: Arc<str>,
        member: MemberId,
        position: u64,
    ) {
        shard.release(&queue, member, position);
        let key = (member, queue);
        let Some(&(target, through)) = self.owner.catch_up.get(&key) else {
            return;
        };
        if position >= target {
            self.owner.catch_up.remove(&key);
            let (member, queue) = key;
            shard.release(&queue, member, through);
            shard.send_ext(0, msg(Msg::QueueCaughtUp { member, queue }));
        }
    }

    /// Settlements on every replicated queue now wait for `member` (expected
    /// backups at promotion, new backups, backups that timed out catching up).
    pub(super) fn guard_member(&mut self, shard: &mut Shard, member: MemberId) {
        self.owner.guarded.insert(member);
        for name in shard.queue_names() {
            let all = shard
                .queue(&name)
                .is_some_and(|q| self.queue_level(&q.settings) == Level::All);
            if all {
                hold_for_backup(shard, &name, member);
            }
        }
    }

    /// Too few backups are ready: every replicated queue's settlements wait,
    /// those waiting now included, and so do those of queues declared later.
    pub(super) fn withhold(&mut self, shard: &mut Shard) {
        let now = shard.now();
        let mut withheld = VecDeque::new();
        for name in shard.queue_names() {
            let all = shard
                .queue(&name)
                .is_some_and(|q| self.queue_level(&q.settings) == Level::All);
            // Tapped, so that each new publish is timed.
            if all && shard.hold_held(&name, MIN_BACKUPS) {
                shard.tap_queue(&name);
                for position in shard.held_positions(&name) {
                    withheld.push_back((now, name.clone(), position));
                }
            }
        }
        self.owner.guarded.insert(MIN_BACKUPS);
        self.owner.withheld = Some(withheld);
    }

    /// Enough backups are ready: what waited only for them settles.
    pub(super) fn release(&mut self, shard: &mut Shard) {
        self.owner.withheld = None;
        self.owner.guarded.remove(&MIN_BACKUPS);
        shard.drop_holder(MIN_BACKUPS);
    }

    /// Rejects the publishes withheld for longer than
    /// `ha-min-backups-timeout` that are still waiting on their queue.
    pub(super) fn reject_overdue(&mut self, shard: &mut Shard, now: Instant) {
        let timeout = self.settings.min_backups_timeout;
        let Some(withheld) = self.owner.withheld.as_mut() else {
            return;
        };
        let mut rejected = 0u64;
        let error = || {
            ErrorCondition::new(
                condition::RESOURCE_LIMIT_EXCEEDED,
                format!(
                    "not settled: fewer than ha-min-backups backups were ready for {} (ha-min-backups-timeout); the message was not kept",
                    format_duration(timeout)
                ),
            )
        };
        let mut said = None;
        while let Some((since, _, _)) = withheld.front() {
            if now.saturating_duration_since(*since) < timeout {
                break;
            }
            let Some((_, queue, position)) = withheld.pop_front() else {
                break;
            };
            let error = said.get_or_insert_with(error).clone();
            if shard.reject_held(&queue, position, error) {
                rejected += 1;
            }
        }
        if rejected > 0 {
            tracing::warn!(
                "HA: rejected {rejected} publishes that waited ha-min-backups-timeout for ready backups"
            );
        }
    }

    /// Every shard: a newer primary exists. What settlements waited for no
    /// longer counts here: forgotten, never given (the publishers are being
    /// disconnected and send again to the new primary).
    pub(super) fn stepped_down(&mut self, shard: &mut Shard) {
        self.owner.withheld = None;
        for holder in std::mem::take(&mut self.owner.guarded) {
            shard.abandon_holder(holder);
        }
        for sink in self.owner.sinks.drain().flat_map(|(_, s)| s) {
            shard.abandon_holder(sink.member);
        }
        self.owner.catch_up.clear();
    }

    /// Every shard: `member` is gone; release what waited for it.
    pub(super) fn drop_member(&mut self, shard: &mut Shard, member: MemberId) {
        self.owner.guarded.remove(&member);
        shard.drop_holder(member);
        for sinks in self.owner.sinks.values_mut() {
            sinks.retain(|s| s.member != member);
        }
        self.owner.catch_up.retain(|(m, _), _| *m != member);
        self.primary_forget(member);
    }

    /// A configuration change this shard applied: a new owned queue waits for
    /// every guarded backup; a deleted one is streamed no more.
    pub(super) fn config_applied(&mut self, shard: &mut Shard, event: &ConfigEvent) {
        match event {
            ConfigEvent::QueueDeclared {
                name,
                owner,
                settings,
            } if *owner == shard.id
                && !self.owner.guarded.is_empty()
                && self.queue_level(settings) == Level::All =>
            {
                for &member in &self.owner.guarded {
                    if member == MIN_BACKUPS {
                        shard.hold_held(name, member);
                    } else {
                        hold_for_backup(shard, name, member);
                    }
                }
                if self.owner.withheld.is_some() {
                    shard.tap_queue(name);
                }
            }
            ConfigEvent::QueueDeleted { name } => {
                // A queue replica's link ends with its queue (it hears why
                // when it attaches again); a backup hears of the delete.
                let replicas = self.owner.sinks.remove(name).unwrap_or_default();
                for sink in replicas
                    .into_iter()
                    .filter(|s| crate::guard::is_queue_replica(s.member))
                {
                    shard.send_ext(sink.shard, msg(Msg::CloseLink { sink }));
                }
                self.owner.catch_up.retain(|(_, q), _| q != name);
            }
            _ => {}
        }
    }
}

/// Publishes to owned queue `name` from now on settle only once backup
/// `member` has them (unless the test-only planted bug says otherwise).
fn hold_for_backup(shard: &mut Shard, name: &Arc<str>, member: MemberId) {
    if crate::planted::settle_before_backup_ack() {
        return;
    }
    shard.hold(name, member);
}
