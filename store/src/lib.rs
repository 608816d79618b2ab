//! Tandem's persistent store: one journal per worker shard (segment files of
//! checksummed records, written in groups with one sync in flight) and a small
//! durable-configuration file, plugged into the shards through their
//! extension seam (the change tap and a settlement holder) and their disk
//! seam (writes the runtime performs on io_uring).
//!
//! - [`record`]: the on-disk format and the scanner that reads it back (torn
//!   tails cut, damage in the middle refused).

pub mod config_file;
pub mod ext;
pub mod journal;
pub mod mem_disk;
pub mod record;
pub mod recovery;
