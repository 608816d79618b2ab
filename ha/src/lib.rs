//! tandem-ha: the HA module, as sans-I/O state machines the broker's runtime
//! drives (and tests drive with a virtual clock).
//!
//! - [`status`]: broker statuses and the legal transitions between them.
//! - [`node`]: one broker's role: promotion rules, finding the primary,
//!   expected backups and their timeout, heartbeat drops, epochs.
//! - [`guard`]: delayed settlement of publishes until backups have them.
//! - [`broker`]: the role as the broker runs it on shard 0: the `ha-broker`
//!   management entity, promotion, and whom the shards admit.
//!
//! Not built yet (see README): the replication stream itself (configuration,
//! catch-up and live events between the brokers), so backups stay `joining`.

pub mod broker;
pub mod guard;
pub mod node;
pub mod status;
