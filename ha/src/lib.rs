//! tandem-ha: the HA module. It plugs into every shard of `tandem-shards`
//! through the extension seam (`tandem_shards::broker::ext`), which names
//! nothing after HA.
//!
//! - [`status`]: broker statuses and the legal transitions between them.
//! - [`node`]: one broker's role as a sans-I/O state machine: promotion rules,
//!   finding the primary, membership (one member per link), expected backups
//!   and their timeout, heartbeat drops, epochs.
//! - [`broker`]: the role as shard 0 runs it: the `ha-broker` management
//!   entity, promotion, and whom the shards admit.
//! - [`role`]: what the role and the stream say to each other.
//! - [`stream`]: the replication stream: queue owners, the primary's shard 0,
//!   link hosts, the backup's apply; and its wire codec ([`stream::codec`]).
//! - [`guard`]: delayed settlement: each backup link is a settlement holder.
//! - [`epoch_file`]: the epoch a broker last knew, kept in its data-dir.
//! - [`planted`]: bugs planted on purpose (feature `planted-bugs`, tests
//!   only) to prove that the reliability checkers find them.

pub mod broker;
pub mod epoch_file;
pub mod guard;
pub mod node;
pub mod planted;
pub mod role;
pub mod status;
pub mod stream;

/// A queue position given by the primary of epoch `e` is at least
/// `e << EPOCH_SHIFT`: each primary gives positions of its own, so a position
/// names one message across the cluster's history.
pub const EPOCH_SHIFT: u32 = 40;

/// A position as people read it: `epoch:n` (the `n`th position the primary of
/// that epoch gave), or the bare number for one given before any promotion.
pub fn position_text(position: u64) -> String {
    match position >> EPOCH_SHIFT {
        0 => position.to_string(),
        epoch => format!("{epoch}:{}", position & ((1 << EPOCH_SHIFT) - 1)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn positions_read_as_epoch_and_number() {
        assert_eq!(super::position_text(17), "17");
        assert_eq!(super::position_text((3 << 40) + 200), "3:200");
        assert_eq!(super::position_text(0), "0");
    }
}
