// The body of the `frame_decoder` fuzz target, shared with its stable stand-in
// `shards/tests/fuzz_smoke.rs`: both `include!` this file, so it names its own
// imports and needs only `bytes` and `tandem_shards`.

/// Feeds `data` to a server-side connection engine the way the broker's read loop
/// does, answering its events as the broker would, and checks that everything the
/// engine writes back is well-formed AMQP. Also splits and decodes `data` as raw
/// frames.
///
/// Input layout: `data[0]` bit 0 clear: the AMQP protocol header is put in front
/// (so half the inputs get past header negotiation); bit 1 set: the engine has an
/// idle timeout; bits 2..8: milliseconds the clock advances per read. `data[1]`:
/// the read size (1..=256 bytes). The rest is what the peer sends.
fn frame_decoder_body(data: &[u8]) {
    use std::time::{Duration, Instant};

    use bytes::{Buf, BytesMut};
    use tandem_shards::amqp::codec::Value;
    use tandem_shards::amqp::connection::{Connection, ConnectionConfig, Event, Sasl};
    use tandem_shards::amqp::frame::{
        decode_amqp, decode_sasl, split_frame, AMQP_HEADER, FRAME_AMQP, FRAME_SASL, SASL_HEADER,
    };
    use tandem_shards::amqp::performative::{DeliveryState, ErrorCondition, Role};

    /// The broker's default max-frame-size.
    const MAX_FRAME: u32 = 65536;

    /// Answers the engine's events as the broker does: accept (or refuse) attaches
    /// echoing the peer's termini, grant credit to publishers, send to consumers
    /// with credit, settle what arrives.
    fn answer(conn: &mut Connection) {
        while let Some(event) = conn.poll_event() {
            match event {
                Event::Attached { link, attach } => {
                    if attach.name.starts_with('!') {
                        let error =
                            ErrorCondition::new("amqp:not-found", "refused by the fuzz body");
                        conn.refuse_attach(link, &attach, error);
                        continue;
                    }
                    conn.accept_attach(
                        link,
                        &attach,
                        attach.source.clone(),
                        attach.target.clone(),
                        None,
                    );
                    if attach.role == Role::Sender {
                        conn.grant_credit(link, 3, false);
                    }
                }
                Event::Credit { link, credit, .. } if credit > 0 => {
                    // An amqp-value section holding the string "hi".
                    let _ = conn.send(link, b"tag", b"\x00\x53\x77\xa1\x02hi", false);
                    conn.drained(link);
                }
                Event::Transfer {
                    link,
                    delivery_id,
                    settled,
                    ..
                } => {
                    if !settled {
                        let accepted = DeliveryState::Accepted;
                        conn.disposition(
                            link.channel,
                            Role::Receiver,
                            delivery_id,
                            delivery_id,
                            true,
                            Some(&accepted),
                        );
                    }
                    conn.grant_credit(link, 3, false);
                }
                _ => {}
            }
        }
    }

    /// Everything the engine writes must parse: protocol headers, then frames whose
    /// bodies decode. A broker that emits what it cannot read itself breaks peers.
    fn check_output(mut out: BytesMut) {
        while !out.is_empty() {
            if out.starts_with(b"AMQP") {
                assert!(
                    out.len() >= 8,
                    "engine wrote a truncated protocol header: {out:02x?}"
                );
                assert!(
                    out[..8] == AMQP_HEADER || out[..8] == SASL_HEADER,
                    "engine wrote an unknown protocol header: {:02x?}",
                    &out[..8]
                );
                out.advance(8);
                continue;
            }
            let frame = match split_frame(&mut out, u32::MAX) {
                Ok(Some(frame)) => frame,
                Ok(None) => panic!("engine wrote a truncated frame: {out:02x?}"),
                Err(e) => panic!("engine wrote a malformed frame ({e}): {out:02x?}"),
            };
            let body = frame.body.clone();
            match frame.frame_type {
                FRAME_AMQP => {
                    if let Err(e) = decode_amqp(frame) {
                        panic!("engine wrote an undecodable AMQP frame ({e}): {body:02x?}");
                    }
                }
                FRAME_SASL => {
                    if let Err(e) = decode_sasl(frame) {
                        panic!("engine wrote an undecodable SASL frame ({e}): {body:02x?}");
                    }
                }
                other => panic!("engine wrote frame type {other}"),
            }
        }
    }

    let (control, peer) = match data {
        [a, b, rest @ ..] => ([*a, *b], rest),
        _ => return,
    };
    let mut input = Vec::with_capacity(8 + peer.len());
    if control[0] & 1 == 0 {
        input.extend_from_slice(&AMQP_HEADER);
    }
    input.extend_from_slice(peer);
    let read_size = usize::from(control[1]) + 1;
    let step = Duration::from_millis(u64::from(control[0] >> 2));

    let cfg = ConnectionConfig {
        container_id: "fuzz".into(),
        max_frame_size: MAX_FRAME,
        channel_max: 255,
        idle_timeout: (control[0] & 2 != 0).then_some(Duration::from_millis(50)),
        properties: Some(Value::Map(vec![(
            Value::symbol("product"),
            Value::string("tandem"),
        )])),
        max_message_size: 1 << 20,
        hostname: None,
        sasl: Sasl::Server {
            mechanisms: vec!["ANONYMOUS".into()],
            authenticator: Box::new(|_: &str, _: &[u8]| Some("a".into())),
            require: false,
        },
    };
    let mut now = Instant::now();
    let mut conn = Connection::server(cfg, now);
    let mut written = BytesMut::new();
    let mut buf = BytesMut::new();
    for piece in input.chunks(read_size) {
        now += step;
        buf.extend_from_slice(piece);
        conn.input(&mut buf, now);
        answer(&mut conn);
        conn.tick(now);
        answer(&mut conn);
        written.extend_from_slice(&conn.output().split());
        conn.wrote(now);
        if conn.is_closed() {
            break;
        }
    }
    // A quiet second: heartbeats, or the idle timeout closing the connection.
    conn.tick(now + Duration::from_secs(1));
    conn.input_eof();
    answer(&mut conn);
    written.extend_from_slice(&conn.output().split());
    check_output(written);

    // The splitter and decoder on their own, over the raw bytes.
    let mut raw = BytesMut::from(peer);
    while let Ok(Some(frame)) = split_frame(&mut raw, MAX_FRAME) {
        let _ = decode_amqp(frame);
    }
}
