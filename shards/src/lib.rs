//! tandem-shards: the broker engine, one instance per core.
//!
//! - [`access`]: the access-policy seam (who may connect, attach, manage, publish).
//! - [`amqp`]: the AMQP 1.0 codec, framing, performatives, message sections and the
//!   sans-I/O connection engine (used by the broker and by [`client`]).
//! - [`attributes`]: reading and writing attribute maps (queue settings).
//! - [`holders`]: settlement holders (a publish settles once every holder released it).
//! - [`queue`], [`exchange`], [`placement`]: nodes, routing, and which shard owns a queue.
//! - [`broker`]: one shard's state and logic, without I/O.
//! - [`transport`]: between a connection's socket and its engine (plain TCP; TLS next).
//! - [`runtime`]: the thin glommio layer: executors, sockets, rings and doorbells.
//! - [`stats`]: a read-only view of the running shards' counters for other threads.
//! - [`client`]: a small blocking AMQP client for tools, tests and (later) HA links.
//! - [`url`], [`duration`]: parsing of broker URLs and durations.

pub mod access;
pub mod acl;
pub mod amqp;
pub mod attributes;
pub mod broker;
pub mod client;
pub mod disk;
pub mod duration;
pub mod exchange;
pub mod holders;
pub mod log_context;
pub mod management;
pub mod placement;
pub mod queue;
pub mod ranges;
pub mod reload;
pub mod runtime;
pub mod shown;
pub mod stall;
pub mod stats;
pub mod swapped;
pub mod tls;
pub mod transport;
pub mod url;
pub mod users;
