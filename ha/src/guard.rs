//! Delayed settlement: settlements of publishes to a replicated queue wait for
//! every backup guarding it. Each backup's membership (one per link) is one
//! settlement holder of `tandem-shards` ([`tandem_shards::holders`]); the
//! replication stream holds a queue for a backup when it starts streaming it,
//! and releases positions as the backup acknowledges them.
//!
//! `ha-min-backups` is one more holder, [`MIN_BACKUPS`]: while fewer backups
//! are ready it holds every replicated queue, including what a lost backup
//! held, and it lets go once enough are ready again.

/// Identifies a backup within the primary's membership (one per link); it is
/// also the backup's settlement-holder id on every queue owner.
pub type MemberId = tandem_shards::holders::HolderId;

/// The holder that withholds settlements while fewer than `ha-min-backups`
/// backups are ready. (Members count up from 1; the store's holder is
/// `u64::MAX`.)
pub const MIN_BACKUPS: MemberId = u64::MAX - 1;

/// A queue replica's link (another broker copying one queue, `tandem-ha
/// replicate`) has an id with this bit: it is never a member, and nothing
/// waits for it. (Below [`MIN_BACKUPS`], which has the bit too.)
pub const QUEUE_REPLICA: MemberId = 1 << 62;

/// Whether `member` is a queue replica's link, not a backup.
pub fn is_queue_replica(member: MemberId) -> bool {
    member & QUEUE_REPLICA != 0 && member < MIN_BACKUPS
}
