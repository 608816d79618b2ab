//! The transport layer: what sits between a connection's socket and its
//! engine. Bytes read from the socket become the engine's input, and the
//! engine's output becomes bytes to write, through the connection's
//! [`Transport`]. Plain TCP hands them through untouched (the engine reads
//! straight from the socket's buffer, no copy); TLS will decrypt and encrypt
//! here, sans-I/O like the engine, so the engine never knows. The runtime
//! keeps one socket descriptor per connection and drives both directions from
//! one task.

use bytes::{Bytes, BytesMut};

/// How a connection's bytes are carried.
#[derive(Debug, Default)]
pub enum Transport {
    /// Plain TCP.
    #[default]
    Plain,
}

impl Transport {
    /// The buffer socket reads go into. After a read, [`Transport::received`]
    /// says which bytes the engine should see.
    pub fn read_buffer<'a>(&'a mut self, socket: &'a mut BytesMut) -> &'a mut BytesMut {
        match self {
            Transport::Plain => socket,
        }
    }

    /// The bytes the engine should read now, after socket bytes arrived in
    /// the read buffer.
    pub fn received<'a>(&'a mut self, socket: &'a mut BytesMut) -> &'a mut BytesMut {
        match self {
            Transport::Plain => socket,
        }
    }

    /// What to write to the socket for the engine's output `plain`.
    pub fn to_send(&mut self, plain: Bytes) -> Bytes {
        match self {
            Transport::Plain => plain,
        }
    }
}
