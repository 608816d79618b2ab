//! The `journal_segment` and `durable_config` fuzz targets' bodies
//! (store/fuzz) on the stable toolchain: real segments and configuration
//! files, a few thousand seeded mutations of them, and random bytes, the same
//! every run, so `cargo test` keeps the bodies compiling and catches
//! regressions; `scripts/fuzz` explores further.

use bytes::{Bytes, BytesMut};
use tandem_shards::broker::ConfigOp;
use tandem_shards::exchange::{BindingKey, ExchangeType};
use tandem_shards::queue::QueueSettings;
use tandem_store::record::Record;

include!("../fuzz/store_body.rs");

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    /// `seed` with one to four bytes overwritten, inserted, cut or copied
    /// (never the first, which picks the body's mode).
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut out = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            let len = out.len();
            let at = 1 + self.below(len);
            match self.below(5) {
                0 if at < len => out[at] = self.byte(),
                1 if at < len => {
                    out[at] = [0x00, 0x01, 0x02, 0x03, 0x40, 0x80, 0xff][self.below(7)]
                }
                2 => {
                    let byte = self.byte();
                    out.insert(at.min(len), byte);
                }
                3 if at < len => {
                    let n = self.below(len - at) + 1;
                    out.drain(at..at + n.min(8));
                }
                _ if at < len => {
                    let n = (self.below(len - at) + 1).min(24);
                    let piece = out[at..at + n].to_vec();
                    let to = 1 + self.below(len);
                    out.splice(to.min(len)..to.min(len), piece);
                }
                _ => {}
            }
        }
        out
    }
}

/// Records as the journal writes them, behind the body's mode byte.
fn records(mode: u8) -> Vec<u8> {
    let mut out = BytesMut::new();
    for record in [
        Record::Enqueue {
            queue: "q".into(),
            position: 1,
            message: Bytes::from_static(b"\x00\x53\x77\xa1\x02hi"),
        },
        Record::Enqueue {
            queue: "q".into(),
            position: 2,
            message: Bytes::from_static(b"m2"),
        },
        Record::Redelivered {
            queue: "q".into(),
            counts: vec![(2, 3)],
        },
        Record::Dequeue {
            queue: "q".into(),
            positions: vec![1, 9],
        },
    ] {
        record.encode(&mut out);
    }
    [&[mode][..], &out].concat()
}

#[test]
fn journal_segments() {
    let mut rng = Rng(0x5e9_3e47);
    // Checksums made right, left as mutated, and a byte flipped after; with
    // and without repair; zero padding after the records.
    for mode in [0u8, 1, 4, 5, 8 | (3 << 4), 9 | (5 << 4)] {
        let mut seed = records(mode);
        seed.extend_from_slice(&[0; 16]);
        journal_segment_body(&seed);
        for _ in 0..600 {
            journal_segment_body(&rng.mutate(&seed));
        }
    }
    // Whole files, the header included.
    let mut whole = vec![2u8];
    whole.extend_from_slice(&tandem_store::record::segment_header(0, 1));
    whole.extend_from_slice(&records(0)[1..]);
    for _ in 0..600 {
        journal_segment_body(&rng.mutate(&whole));
    }
    for _ in 0..1000 {
        let n = rng.below(80);
        let junk: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
        journal_segment_body(&junk);
    }
}

#[test]
fn durable_configuration_files() {
    let ops = vec![
        ConfigOp::ReplaceQueue {
            name: "orders".into(),
            settings: QueueSettings {
                durable: true,
                max_count: 10,
                lvq_key: Some("k".into()),
                ..Default::default()
            },
        },
        ConfigOp::DeclareExchange {
            name: "events".into(),
            kind: ExchangeType::Headers,
            durable: true,
            replicate: Some("all".into()),
        },
        ConfigOp::Bind {
            exchange: "events".into(),
            queue: "orders".into(),
            key: BindingKey::Headers {
                match_all: true,
                values: vec![("a".into(), tandem_shards::amqp::codec::Value::Int(1))],
            },
        },
    ];
    let file = tandem_store::config_file::encode(&ops);
    let mut rng = Rng(0xc0_4f16);
    let whole = [&[0u8][..], &file].concat();
    let body = [&[1u8][..], &file[16..]].concat();
    for seed in [&whole, &body] {
        durable_config_body(seed);
        for _ in 0..1500 {
            durable_config_body(&rng.mutate(seed));
        }
    }
    for _ in 0..2000 {
        let n = rng.below(64);
        let mut input = vec![2u8];
        input.extend((0..n).map(|_| rng.byte()));
        durable_config_body(&input);
    }
}
