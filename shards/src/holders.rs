//! Settlement holders: a publisher's message is settled only when every holder
//! of its queue has released its position, or it was already consumed (and
//! accepted) and no holder that keeps consumed messages waits for it, or the
//! holder is gone. The replication guard of `tandem-ha`
//! registers one holder per backup; the store will be another.
//!
//! A holder holds a queue from a first position on (the queue's next position
//! when the hold was set up): earlier messages may already have been settled,
//! so they cannot be held for it. Releases are cumulative per queue, so held
//! settlements are released from the front, in position order.

use std::collections::BTreeMap;

use hashbrown::HashMap;
use std::sync::Arc;

/// Identifies a holder (for replication: a backup's membership on one link).
pub type HolderId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Guard {
    /// Positions from here on wait for this backup.
    first: u64,
    /// The backup has every position up to and including this one.
    acked: u64,
    /// Consumption does not release what this holder waits for (a primary
    /// short of backups settles nothing, not even what its consumers took).
    keeps_consumed: bool,
}

impl Guard {
    fn waits(&self, position: u64) -> bool {
        position >= self.first && self.acked < position
    }
}

struct QueueGuard<T> {
    /// Held settlements by position.
    held: BTreeMap<u64, T>,
    guards: HashMap<HolderId, Guard>,
}

impl<T> QueueGuard<T> {
    fn new() -> Self {
        QueueGuard {
            held: BTreeMap::new(),
            guards: HashMap::new(),
        }
    }

    fn waits(&self, position: u64) -> bool {
        self.guards.values().any(|g| g.waits(position))
    }

    fn release(&mut self, out: &mut Vec<T>) {
        while let Some((&p, _)) = self.held.first_key_value() {
            if self.waits(p) {
                break;
            }
            if let Some((_, token)) = self.held.pop_first() {
                out.push(token);
            }
        }
    }
}

/// Held settlements for every replicated queue on the primary. `T` is whatever
/// the broker needs to settle the publisher (its ack token).
pub struct Holds<T> {
    queues: HashMap<Arc<str>, QueueGuard<T>>,
}

impl<T> Default for Holds<T> {
    fn default() -> Self {
        Holds {
            queues: HashMap::new(),
        }
    }
}

impl<T> Holds<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// `backup` guards `queue` from `first` on (positions before it do not wait).
    pub fn hold(&mut self, queue: &Arc<str>, holder: HolderId, first: u64) {
        self.guard(queue, holder, first, false);
    }

    /// `holder` guards every position of `queue`, those held now included,
    /// and consuming a message does not release it (see [`Holds::dequeued`]).
    pub fn hold_all(&mut self, queue: &Arc<str>, holder: HolderId) {
        self.guard(queue, holder, 0, true);
    }

    /// A holder that already guards `queue` keeps its first position.
    fn guard(&mut self, queue: &Arc<str>, holder: HolderId, first: u64, keeps_consumed: bool) {
        let q = self
            .queues
            .entry(queue.clone())
            .or_insert_with(QueueGuard::new);
        q.guards.entry(holder).or_insert(Guard {
            first,
            acked: first.saturating_sub(1),
            keeps_consumed,
        });
    }

    /// A message was stored at `position`: returns the token back at once when no
    /// backup guards it, otherwise holds it.
    pub fn enqueued(&mut self, queue: &Arc<str>, position: u64, token: T) -> Option<T> {
        match self.queues.get_mut(queue) {
            Some(q) if q.waits(position) => {
                q.held.insert(position, token);
                None
            }
            _ => Some(token),
        }
    }

    /// `backup` has every message of `queue` up to and including `upto`.
    pub fn release(&mut self, queue: &str, holder: HolderId, upto: u64, out: &mut Vec<T>) {
        let Some(q) = self.queues.get_mut(queue) else {
            return;
        };
        if let Some(g) = q.guards.get_mut(&holder) {
            g.acked = g.acked.max(upto);
        }
        q.release(out);
    }

    /// The message at `position` was consumed and accepted on the primary: its
    /// settlement no longer waits for replication, unless a holder that
    /// keeps consumed messages waits for it (it stays held).
    pub fn dequeued(&mut self, queue: &str, position: u64) -> Option<T> {
        let q = self.queues.get_mut(queue)?;
        if q.guards
            .values()
            .any(|g| g.keeps_consumed && g.waits(position))
        {
            return None;
        }
        q.held.remove(&position)
    }

    /// Takes the held settlement at `position` out, whoever waits for it
    /// (to refuse it instead).
    pub fn take(&mut self, queue: &str, position: u64) -> Option<T> {
        self.queues.get_mut(queue)?.held.remove(&position)
    }

    /// A backup is gone (heartbeat timeout, disconnect, expected-backup timeout):
    /// nothing waits for it any more.
    pub fn drop_holder(&mut self, holder: HolderId, out: &mut Vec<T>) {
        for q in self.queues.values_mut() {
            if q.guards.remove(&holder).is_some() {
                q.release(out);
            }
        }
    }

    /// The queue was deleted: everything held for it is released.
    pub fn remove_queue(&mut self, queue: &str, out: &mut Vec<T>) {
        if let Some(q) = self.queues.remove(queue) {
            out.extend(q.held.into_values());
        }
    }

    /// Positions of `queue` whose settlements are held.
    pub fn held_positions(&self, queue: &str) -> Vec<u64> {
        self.queues
            .get(queue)
            .map(|q| q.held.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Whether `holder` holds `queue`.
    pub fn holds(&self, holder: HolderId, queue: &str) -> bool {
        self.queues
            .get(queue)
            .is_some_and(|q| q.guards.contains_key(&holder))
    }

    /// Settlements held for `queue`.
    pub fn held(&self, queue: &str) -> usize {
        self.queues.get(queue).map_or(0, |q| q.held.len())
    }

    /// Settlements held in all queues.
    pub fn held_total(&self) -> usize {
        self.queues.values().map(|q| q.held.len()).sum()
    }

    /// Whether `backup` has acknowledged everything it guards on every queue
    /// up to the given current positions (used to decide readiness).
    pub fn released(&self, holder: HolderId, queue: &str, position: u64) -> bool {
        self.queues
            .get(queue)
            .and_then(|q| q.guards.get(&holder))
            .is_some_and(|g| g.acked >= position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> Arc<str> {
        "orders".into()
    }

    #[test]
    fn unguarded_messages_settle_at_once() {
        let mut g: Holds<u32> = Holds::new();
        assert_eq!(g.enqueued(&q(), 1, 10), Some(10));
    }

    #[test]
    fn settlement_waits_for_every_backup_then_releases_in_order() {
        let mut g = Holds::new();
        g.hold(&q(), 1, 1);
        g.hold(&q(), 2, 1);
        for p in 1..=3 {
            assert_eq!(g.enqueued(&q(), p, p * 10), None);
        }
        let mut out = Vec::new();
        g.release("orders", 1, 3, &mut out);
        assert!(out.is_empty(), "backup 2 has nothing yet");
        g.release("orders", 2, 2, &mut out);
        assert_eq!(out, vec![10, 20]);
        out.clear();
        g.release("orders", 2, 3, &mut out);
        assert_eq!(out, vec![30]);
    }

    #[test]
    fn a_holder_from_position_zero_keeps_what_others_held() {
        let mut g = Holds::new();
        g.hold(&q(), 1, 5);
        assert_eq!(g.enqueued(&q(), 5, "a"), None);
        assert_eq!(g.enqueued(&q(), 6, "b"), None);
        let mut out = Vec::new();
        g.release("orders", 1, 5, &mut out);
        assert_eq!(out, vec!["a"]);
        out.clear();
        // A gate closing while a backup is lost: what waited still waits.
        g.hold(&q(), 9, 0);
        assert!(g.holds(9, "orders") && !g.holds(2, "orders"));
        g.drop_holder(1, &mut out);
        assert!(out.is_empty());
        assert_eq!(g.held_positions("orders"), vec![6]);
        assert_eq!(g.enqueued(&q(), 7, "c"), None);
        g.drop_holder(9, &mut out);
        assert_eq!(out, vec!["b", "c"]);
    }

    #[test]
    fn consumed_messages_do_not_wait_and_dropped_backups_release() {
        let mut g = Holds::new();
        g.hold(&q(), 1, 1);
        g.enqueued(&q(), 1, "a");
        g.enqueued(&q(), 2, "b");
        assert_eq!(g.dequeued("orders", 1), Some("a"));
        let mut out = Vec::new();
        g.drop_holder(1, &mut out);
        assert_eq!(out, vec!["b"]);
        assert_eq!(g.held_total(), 0);
    }

    #[test]
    fn a_late_guard_does_not_hold_earlier_positions() {
        let mut g = Holds::new();
        g.hold(&q(), 1, 5);
        assert_eq!(g.enqueued(&q(), 4, 'x'), Some('x'));
        assert_eq!(g.enqueued(&q(), 5, 'y'), None);
    }
}
