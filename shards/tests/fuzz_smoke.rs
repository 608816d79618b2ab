//! The `frame_decoder` fuzz target's body (shards/fuzz) run on the stable
//! toolchain: a few thousand seeded pseudo-random inputs and mutations of real
//! conversations, the same every run. `cargo +nightly fuzz run frame_decoder`
//! explores much further; this keeps the body compiling and catches regressions
//! in every ordinary `cargo test`.

use bytes::{Bytes, BytesMut};
use tandem_shards::amqp::codec::Value;
use tandem_shards::amqp::frame::{
    begin_frame, end_frame, write_frame, write_sasl_frame, AMQP_HEADER, FRAME_AMQP, SASL_HEADER,
};
use tandem_shards::amqp::performative::{
    Attach, Begin, Close, DeliveryState, Detach, Disposition, End, Flow, Open, Performative, Role,
    SaslFrame, Source, Target, Transfer,
};

include!("../fuzz/frame_decoder_body.rs");

/// xorshift64*: deterministic, dependency-free, good enough to pick mutations.
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

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

fn frame(out: &mut BytesMut, channel: u16, perf: Performative) {
    write_frame(out, channel, &perf);
}

/// A transfer frame: the performative, then its payload inside the same frame.
fn transfer_frame(out: &mut BytesMut, perf: Performative, payload: &[u8]) {
    let start = begin_frame(out, FRAME_AMQP, 0);
    perf.encode(out);
    out.extend_from_slice(payload);
    end_frame(out, start);
}

fn attach(name: &str, handle: u32, role: Role, address: &str) -> Performative {
    Performative::Attach(Attach {
        name: name.into(),
        handle,
        role,
        snd_settle_mode: None,
        rcv_settle_mode: None,
        source: Some(Source {
            address: Some(address.into()),
            ..Default::default()
        }),
        target: Some(Target {
            address: Some(address.into()),
            ..Default::default()
        }),
        initial_delivery_count: (role == Role::Sender).then_some(0),
        max_message_size: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    })
}

fn transfer(handle: u32, id: u32, more: bool, settled: bool) -> Performative {
    Performative::Transfer(Transfer {
        handle,
        delivery_id: Some(id),
        delivery_tag: Some(Bytes::copy_from_slice(&id.to_be_bytes())),
        message_format: Some(0),
        settled: Some(settled),
        more,
        ..Default::default()
    })
}

/// Whole conversations a client could have with the broker (without the leading
/// control bytes the body reads): the starting points for mutation.
fn conversations() -> Vec<Vec<u8>> {
    let open = Performative::Open(Open {
        container_id: "smoke".into(),
        max_frame_size: Some(512),
        channel_max: Some(3),
        idle_timeout: Some(10),
        ..Default::default()
    });
    let begin = Performative::Begin(Begin {
        remote_channel: None,
        next_outgoing_id: 0,
        incoming_window: 100,
        outgoing_window: 100,
        handle_max: Some(7),
        properties: None,
    });

    // Publisher: attach a sender, send (one message in two frames), settle, detach.
    let mut publish = BytesMut::new();
    frame(&mut publish, 0, open.clone());
    frame(&mut publish, 0, begin.clone());
    frame(&mut publish, 0, attach("pub", 0, Role::Sender, "q"));
    transfer_frame(
        &mut publish,
        transfer(0, 0, true, false),
        b"\x00\x53\x77\xa1\x05hel",
    );
    transfer_frame(&mut publish, transfer(0, 0, false, false), b"lo");
    transfer_frame(
        &mut publish,
        transfer(0, 1, false, true),
        b"\x00\x53\x77\x40",
    );
    frame(
        &mut publish,
        0,
        Performative::Disposition(Disposition {
            role: Role::Sender,
            first: 0,
            last: Some(1),
            settled: true,
            state: Some(DeliveryState::Accepted),
            batchable: false,
        }),
    );
    frame(
        &mut publish,
        0,
        Performative::Detach(Detach {
            handle: 0,
            closed: true,
            error: None,
        }),
    );
    frame(&mut publish, 0, Performative::End(End { error: None }));
    frame(&mut publish, 0, Performative::Close(Close { error: None }));

    // Consumer: attach a receiver, grant credit (with drain and echo), heartbeats.
    let mut consume = BytesMut::new();
    frame(&mut consume, 0, open.clone());
    frame(&mut consume, 0, begin.clone());
    frame(&mut consume, 0, attach("sub", 0, Role::Receiver, "q"));
    frame(
        &mut consume,
        0,
        Performative::Flow(Flow {
            next_incoming_id: Some(0),
            incoming_window: 100,
            next_outgoing_id: 0,
            outgoing_window: 100,
            handle: Some(0),
            delivery_count: Some(0),
            link_credit: Some(5),
            available: None,
            drain: true,
            echo: true,
        }),
    );
    consume.extend_from_slice(&[0, 0, 0, 8, 2, 0, 0, 0]);
    frame(
        &mut consume,
        0,
        Performative::Disposition(Disposition {
            role: Role::Receiver,
            first: 0,
            last: None,
            settled: true,
            state: Some(DeliveryState::Modified {
                delivery_failed: true,
                undeliverable_here: false,
                message_annotations: Some(Value::Map(vec![])),
            }),
            batchable: false,
        }),
    );
    frame(
        &mut consume,
        0,
        attach("!refused", 1, Role::Receiver, "nowhere"),
    );
    frame(&mut consume, 0, Performative::End(End { error: None }));

    // SASL first: the body adds no AMQP header when its control bit says so.
    let mut sasl = BytesMut::new();
    sasl.extend_from_slice(&SASL_HEADER);
    write_sasl_frame(
        &mut sasl,
        &SaslFrame::Init {
            mechanism: "ANONYMOUS".into(),
            initial_response: Some(Bytes::from_static(b"anonymous")),
            hostname: Some("localhost".into()),
        },
    );
    sasl.extend_from_slice(&AMQP_HEADER);
    frame(&mut sasl, 0, open);
    frame(&mut sasl, 0, begin);
    frame(&mut sasl, 0, attach("pub", 0, Role::Sender, "q"));

    vec![publish.to_vec(), consume.to_vec(), sasl.to_vec()]
}

/// One random change: overwrite, insert, delete, duplicate a range, or splice in a
/// piece of another conversation.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, others: &[Vec<u8>]) {
    let len = input.len();
    match rng.below(6) {
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] = rng.byte();
        }
        1 if len > 0 => {
            // Interesting values for sizes and counts.
            let i = rng.below(len);
            input[i] = [0x00, 0x01, 0x40, 0x7f, 0x80, 0xff][rng.below(6)];
        }
        2 => {
            let i = rng.below(len + 1);
            let n = rng.below(16) + 1;
            let junk = rng.bytes(n);
            input.splice(i..i, junk);
        }
        3 if len > 0 => {
            let i = rng.below(len);
            let n = rng.below(len - i) + 1;
            input.drain(i..i + n.min(32));
        }
        4 if len > 0 => {
            let i = rng.below(len);
            let n = (rng.below(len - i) + 1).min(64);
            let piece = input[i..i + n].to_vec();
            let at = rng.below(len + 1);
            input.splice(at..at, piece);
        }
        _ => {
            let other = &others[rng.below(others.len())];
            if !other.is_empty() {
                let i = rng.below(other.len());
                let n = (rng.below(other.len() - i) + 1).min(128);
                let at = rng.below(len + 1);
                input.splice(at..at, other[i..i + n].iter().copied());
            }
        }
    }
}

/// The control bytes the body reads first: header bit, clock step, read size.
fn with_control(rng: &mut Rng, body: &[u8], header: bool) -> Vec<u8> {
    let flags = (rng.byte() & !1) | u8::from(!header);
    let mut input = vec![flags, rng.byte()];
    input.extend_from_slice(body);
    input
}

#[test]
fn unmutated_conversations_produce_well_formed_output() {
    let mut rng = Rng(1);
    for (i, conversation) in conversations().iter().enumerate() {
        // The SASL conversation brings its own headers.
        let header = i != 2;
        for _ in 0..8 {
            frame_decoder_body(&with_control(&mut rng, conversation, header));
        }
    }
}

#[test]
fn random_bytes_never_panic_the_engine() {
    let mut rng = Rng(0x5eed);
    for _ in 0..3000 {
        let n = rng.below(300);
        let input = rng.bytes(n);
        frame_decoder_body(&input);
    }
}

#[test]
fn mutated_conversations_never_panic_the_engine() {
    let seeds = conversations();
    let mut rng = Rng(0x7a4d_e111);
    for round in 0..4000 {
        let i = round % seeds.len();
        let mut body = seeds[i].clone();
        for _ in 0..rng.below(4) + 1 {
            mutate(&mut rng, &mut body, &seeds);
        }
        let input = with_control(&mut rng, &body, i != 2);
        frame_decoder_body(&input);
    }
}

/// Writes the conversations as a seed corpus for cargo fuzz:
/// `cargo test -p tandem-shards --test fuzz_smoke -- --ignored write_seed_corpus`.
#[test]
#[ignore = "writes shards/fuzz/corpus/frame_decoder; run by hand before fuzzing"]
fn write_seed_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/frame_decoder");
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    let mut rng = Rng(3);
    for (i, conversation) in conversations().iter().enumerate() {
        for (j, read_size) in [0u8, 7, 255].into_iter().enumerate() {
            let mut input = with_control(&mut rng, conversation, i != 2);
            input[1] = read_size;
            std::fs::write(dir.join(format!("seed-{i}-{j}")), input).expect("write seed");
        }
    }
}

/// Symbol fields accept a string from the peer (`Fields::symbol`), and the broker
/// echoes the peer's termini in its attach; a non-ASCII "symbol" then goes out as
/// a sym8 our own decoder (and any strict peer) rejects.
#[test]
fn echoed_terminus_with_a_non_ascii_symbol_field_stays_decodable() {
    let target = Value::Described(
        Box::new(Value::Ulong(0x29)),
        // address, durable, expiry-policy (a string where a symbol belongs)
        Box::new(Value::List(vec![
            Value::string("q"),
            Value::Uint(0),
            Value::string("é"),
        ])),
    );
    let attach = Value::Described(
        Box::new(Value::Ulong(0x12)),
        Box::new(Value::List(vec![
            Value::string("link"),
            Value::Uint(0),
            Value::Bool(false),
            Value::Null,
            Value::Null,
            Value::Null,
            target,
        ])),
    );
    let mut out = BytesMut::new();
    frame(
        &mut out,
        0,
        Performative::Open(Open {
            container_id: "c".into(),
            ..Default::default()
        }),
    );
    frame(
        &mut out,
        0,
        Performative::Begin(Begin {
            remote_channel: None,
            next_outgoing_id: 0,
            incoming_window: 10,
            outgoing_window: 10,
            handle_max: None,
            properties: None,
        }),
    );
    let start = begin_frame(&mut out, FRAME_AMQP, 0);
    attach.encode(&mut out);
    end_frame(&mut out, start);
    // Control bytes: AMQP header in front, no idle timeout, one read.
    let mut input = vec![0u8, 255];
    input.extend_from_slice(&out);
    frame_decoder_body(&input);
}
