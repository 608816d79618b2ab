//! Delayed settlement: settlements of publishes to a replicated queue wait for
//! every backup guarding it. Each backup's membership (one per link) is one
//! settlement holder of `tandem-shards` ([`tandem_shards::holders`]); the
//! replication stream holds a queue for a backup when it starts streaming it,
//! and releases positions as the backup acknowledges them.

/// Identifies a backup within the primary's membership (one per link); it is
/// also the backup's settlement-holder id on every queue owner.
pub type MemberId = tandem_shards::holders::HolderId;
