//! The messages the harness sends: one template encoded once per producer, whose
//! body opens with a stamp patched in place before each send (no allocation per
//! message).
//!
//! Body layout (the last `size` bytes of the encoded message, a data section):
//!
//! | bytes  | field                                                 |
//! |--------|-------------------------------------------------------|
//! | 0..4   | run id (u32, big-endian): a fresh number per run      |
//! | 4..8   | producer id (u32)                                     |
//! | 8..16  | sequence number within that producer (u64)           |
//! | 16..24 | send time, ns since the process's clock epoch (u64)  |
//! | 24..   | zeros                                                 |
//!
//! Receivers read the stamp from the end of whatever message arrives, so a broker
//! may add sections in front (a header, annotations) without confusing them. The
//! run id keeps messages an earlier run left on the queue from being counted as
//! this run's.

use std::sync::OnceLock;
use std::time::Instant;

use tandem_shards::amqp::codec::Value;
use tandem_shards::amqp::message::MessageBuilder;

/// Bytes of the stamp at the start of the body; the smallest `--size`.
pub const STAMP_LEN: usize = 24;

/// What a receiver reads from a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub run: u32,
    pub producer: u32,
    pub seq: u64,
    /// Nanoseconds since [`epoch`].
    pub sent_ns: u64,
}

/// The process-wide clock origin every stamp counts from (senders and receivers
/// run in one process, so one monotonic origin serves all of them).
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A run id unlikely to repeat: the clock and the process id, hashed.
pub fn new_run_id() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish() as u32
}

/// Nanoseconds from [`epoch`] to `t`.
pub fn ns_since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64
}

/// An encoded message with a patchable stamp.
pub struct Template {
    bytes: Vec<u8>,
    /// Where the body (and so the stamp) starts.
    body_at: usize,
}

impl Template {
    /// A message with a `size`-byte data body (at least [`STAMP_LEN`]) from
    /// `producer` of `run`; `durable` adds a header asking the broker to keep it.
    pub fn new(run: u32, producer: u32, size: usize, durable: bool) -> Template {
        let size = size.max(STAMP_LEN);
        let bytes = MessageBuilder {
            durable,
            body: Some(Value::Binary(vec![0u8; size].into())),
            ..Default::default()
        }
        .encode()
        .to_vec();
        let body_at = bytes.len() - size;
        let mut t = Template { bytes, body_at };
        t.bytes[body_at..body_at + 4].copy_from_slice(&run.to_be_bytes());
        t.bytes[body_at + 4..body_at + 8].copy_from_slice(&producer.to_be_bytes());
        t
    }

    /// Writes sequence and send time into the body and returns the message.
    pub fn stamp(&mut self, seq: u64, sent_ns: u64) -> &[u8] {
        let at = self.body_at + 8;
        self.bytes[at..at + 8].copy_from_slice(&seq.to_be_bytes());
        self.bytes[at + 8..at + 16].copy_from_slice(&sent_ns.to_be_bytes());
        &self.bytes
    }
}

/// Reads the stamp of a message whose body is `size` bytes; `None` when the
/// message is shorter than that.
pub fn read_stamp(payload: &[u8], size: usize) -> Option<Stamp> {
    let at = payload.len().checked_sub(size.max(STAMP_LEN))?;
    let b = &payload[at..at + STAMP_LEN];
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        u64::from_be_bytes(a)
    };
    Some(Stamp {
        run: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        producer: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        seq: u64_at(8),
        sent_ns: u64_at(16),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_shards::amqp::message::DecodedMessage;

    #[test]
    fn stamped_template_decodes_as_a_data_message_and_reads_back() {
        let mut t = Template::new(99, 7, 64, true);
        let raw = bytes::Bytes::copy_from_slice(t.stamp(41, 123_456));
        let decoded = DecodedMessage::decode(&raw).expect("a valid AMQP message");
        assert!(decoded.header.durable);
        assert!(matches!(decoded.body, Some(Value::Binary(ref b)) if b.len() == 64));
        let s = read_stamp(&raw, 64).expect("long enough");
        assert_eq!(
            s,
            Stamp {
                run: 99,
                producer: 7,
                seq: 41,
                sent_ns: 123_456
            }
        );
    }

    #[test]
    fn a_stamp_survives_sections_a_broker_puts_in_front() {
        let mut t = Template::new(5, 1, 32, false);
        let mut with_header = vec![0x00, 0x53, 0x70, 0x45];
        with_header.extend_from_slice(t.stamp(9, 5));
        assert_eq!(read_stamp(&with_header, 32).map(|s| s.seq), Some(9));
        assert_eq!(read_stamp(&with_header[..10], 32), None);
    }
}
