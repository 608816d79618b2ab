//! AMQP 1.0: the type codec, framing, performatives, message sections and the
//! sans-I/O connection engine shared by the broker and the client.

pub mod codec;
pub mod connection;
pub mod frame;
pub mod message;
pub mod performative;
