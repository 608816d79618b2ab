//! The `replication_event` fuzz target's body (ha/fuzz) on the stable
//! toolchain: every kind of event as the primary writes it, a few thousand
//! seeded mutations of them, and random bytes in each of the body's input
//! modes, the same every run, so `cargo test` keeps the body compiling and
//! catches regressions; `scripts/fuzz` explores further.

use bytes::Bytes;
use tandem_ha::stream::codec::Event;
use tandem_shards::amqp::codec::Value;
use tandem_shards::broker::ConfigOp;
use tandem_shards::exchange::{BindingKey, ExchangeType};
use tandem_shards::queue::{LimitPolicy, QueueSettings};

include!("../fuzz/replication_body.rs");

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

    /// `seed` with one to four bytes overwritten, inserted, cut or copied.
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut out = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            let len = out.len();
            let at = self.below(len + 1);
            match self.below(5) {
                0 if at < len => out[at] = self.byte(),
                1 if at < len => {
                    out[at] =
                        [0x00, 0x01, 0x40, 0x44, 0x45, 0x53, 0x80, 0xa1, 0xd0, 0xff][self.below(10)]
                }
                2 => {
                    let byte = self.byte();
                    out.insert(at, byte);
                }
                3 if at < len => {
                    let n = self.below(len - at) + 1;
                    out.drain(at..at + n.min(8));
                }
                _ if at < len => {
                    let n = (self.below(len - at) + 1).min(16);
                    let piece = out[at..at + n].to_vec();
                    let to = self.below(len + 1);
                    out.splice(to..to, piece);
                }
                _ => {}
            }
        }
        out
    }
}

/// One of every event, as the primary encodes it.
fn events() -> Vec<Event> {
    let settings = QueueSettings {
        max_size: 1 << 20,
        max_count: 5,
        policy: LimitPolicy::Ring,
        durable: true,
        lvq_key: Some("k".into()),
        replicate: Some("all".into()),
        replica_of: Some("u/p@h1:5672,h2".into()),
        ..Default::default()
    };
    vec![
        Event::Config(ConfigOp::ReplaceQueue {
            name: "q".into(),
            settings: settings.clone(),
        }),
        Event::QueueReset {
            name: "q".into(),
            settings,
        },
        Event::QueueSync {
            name: "q".into(),
            settings: QueueSettings::default(),
            next: 100,
            keep: vec![(1, 4), (9, 9)],
        },
        Event::Config(ConfigOp::DeleteQueue {
            name: "q".into(),
            if_unused: false,
        }),
        Event::Config(ConfigOp::DeclareExchange {
            name: "x".into(),
            kind: ExchangeType::Headers,
            durable: true,
            replicate: Some("configuration".into()),
        }),
        Event::Config(ConfigOp::DeleteExchange { name: "x".into() }),
        Event::Config(ConfigOp::Bind {
            exchange: "x".into(),
            queue: "q".into(),
            key: BindingKey::Headers {
                match_all: false,
                values: vec![("colour".into(), Value::string("red"))],
            },
        }),
        Event::Config(ConfigOp::Unbind {
            exchange: "x".into(),
            queue: "q".into(),
            key: BindingKey::Key("a.#".into()),
        }),
        Event::Enqueue {
            queue: "q".into(),
            position: 1 << 40,
            message: Bytes::from_static(b"\x00\x53\x77\xa1\x02hi"),
        },
        Event::Dequeue {
            queue: "q".into(),
            positions: vec![0, 7, 1 << 40],
        },
        Event::Members {
            epoch: 3,
            members: vec![("id".into(), "h:1".into(), "ready".into())],
        },
        Event::Inventory {
            queues: vec!["a".into()],
            exchanges: vec!["x".into()],
        },
        Event::Sync { id: 42 },
    ]
}

#[test]
fn encoded_events_and_their_mutations() {
    let mut seeds: Vec<Vec<u8>> = events()
        .iter()
        .map(|e| [&[0u8][..], &e.encode()].concat())
        .collect();
    // A delivery of several events.
    let several: Vec<u8> = events().iter().flat_map(|e| e.encode().to_vec()).collect();
    seeds.push([&[0u8][..], &several].concat());
    let mut rng = Rng(0x4a_5eed);
    for seed in &seeds {
        replication_event_body(seed);
        for _ in 0..300 {
            replication_event_body(&rng.mutate(seed));
        }
    }
}

#[test]
fn random_fields_for_every_event_type() {
    let mut rng = Rng(0xf1e1d5);
    for _ in 0..3000 {
        let n = rng.below(48);
        let mut input = vec![1, rng.byte()];
        input.extend((0..n).map(|_| rng.byte()));
        replication_event_body(&input);
    }
}

#[test]
fn enq_and_deq_in_the_primarys_layout_changed_and_cut() {
    let mut rng = Rng(0xe9_de9);
    for _ in 0..3000 {
        let n = rng.below(24);
        let mut input = vec![2, rng.byte(), rng.byte(), rng.byte(), rng.byte()];
        input.extend((0..n).map(|_| rng.byte()));
        replication_event_body(&input);
    }
}

#[test]
fn random_bytes() {
    let mut rng = Rng(0x0ddba11);
    for _ in 0..2000 {
        let n = rng.below(64);
        let mut input = vec![0];
        input.extend((0..n).map(|_| rng.byte()));
        replication_event_body(&input);
    }
}
