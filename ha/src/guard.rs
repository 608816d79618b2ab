//! Delayed settlement lives with the queues that hold it, in
//! `tandem_shards::replica::guard`; re-exported here as part of the HA module.

pub use tandem_shards::replica::guard::{MemberId, SettlementGuard};
