// The body of the `replication_event` fuzz target, shared with its stable
// stand-in `ha/tests/fuzz_replication.rs`: both `include!` this file, so it
// names its own imports and needs only `bytes`, `tandem_shards` and
// `tandem_ha`.

/// What a backup does with a replication message from its primary, from
/// arbitrary bytes: every event of it decoded. Nothing panics; every event
/// re-encodes (in one piece or two) to a message that decodes to the same
/// event, all of them together to a message of the same events, and an `enq`
/// or `deq` written by the general encoder decodes the same as the layout the
/// primary writes (which the backup reads in place).
///
/// Input: `data[0] % 3` is 0: the rest is the message. 1: `data[1]` picks an
/// event type and the rest is AMQP values, its fields. 2: an `enq` or `deq`
/// in the primary's own layout, with one byte changed (`data[1..3]`: where,
/// `data[3]`: to what) and cut short (`data[4]`: to which length, 255 none).
fn replication_event_body(data: &[u8]) {
    use bytes::{Bytes, BytesMut};
    use tandem_ha::stream::codec::{Encoded, Event};
    use tandem_shards::amqp::codec::{Decoder, Value};

    const KINDS: [&str; 13] = [
        "queue",
        "queue-reset",
        "queue-sync",
        "queue-delete",
        "exchange",
        "exchange-delete",
        "bind",
        "unbind",
        "enq",
        "deq",
        "members",
        "inventory",
        "sync",
    ];
    /// The amqp-sequence section every event is.
    const SECTION: [u8; 3] = [0x00, 0x53, 0x76];

    /// See `same` in shards/fuzz/amqp_body.rs: NaN in a headers binding.
    fn same<T: PartialEq + std::fmt::Debug>(a: &T, b: &T) -> bool {
        a == b || format!("{a:?}") == format!("{b:?}")
    }

    fn section(items: Vec<Value>) -> Bytes {
        let mut out = BytesMut::from(&SECTION[..]);
        Value::List(items).encode(&mut out);
        out.freeze()
    }

    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let payload = match mode % 3 {
        0 => Bytes::copy_from_slice(rest),
        1 => {
            let Some((&kind, fields)) = rest.split_first() else {
                return;
            };
            let mut items = vec![Value::string(KINDS[usize::from(kind) % KINDS.len()])];
            let mut d = Decoder::new(Bytes::copy_from_slice(fields));
            while let Ok(v) = d.value() {
                items.push(v);
            }
            section(items)
        }
        _ => {
            let [at_hi, at_lo, to, cut, tail @ ..] = rest else {
                return;
            };
            let queue = String::from_utf8_lossy(tail.get(..tail.len().min(8)).unwrap_or(&[]));
            let encoded = if at_hi & 1 == 0 {
                Encoded::enqueue(&queue, u64::from(*to) << 32, Bytes::copy_from_slice(tail))
            } else {
                let positions: Vec<u64> = tail.iter().map(|b| u64::from(*b) * 1000).collect();
                Encoded::dequeue(&queue, &positions)
            };
            let mut wire = BytesMut::new();
            wire.extend_from_slice(&encoded.head);
            wire.extend_from_slice(&encoded.tail);
            let at = usize::from(u16::from_be_bytes([*at_hi, *at_lo]) >> 1);
            if let Some(b) = wire.get_mut(at) {
                *b = *to;
            }
            if *cut != 255 {
                wire.truncate(usize::from(*cut));
            }
            wire.freeze()
        }
    };

    let Ok(events) = Event::decode_all(&payload) else {
        assert!(Event::decode(&payload).is_err(), "{payload:02x?}");
        return;
    };
    assert!(!events.is_empty());
    match Event::decode(&payload) {
        Ok(one) => assert!(
            events.len() == 1 && same(&one, &events[0]),
            "{payload:02x?}"
        ),
        Err(_) => assert!(events.len() > 1, "{payload:02x?}"),
    }

    let mut all = BytesMut::new();
    for event in &events {
        let wire = event.encode();
        let parts = event.encode_parts();
        assert_eq!(
            [&parts.head[..], &parts.tail[..]].concat(),
            &wire[..],
            "{event:?}"
        );
        let back = Event::decode(&wire)
            .unwrap_or_else(|e| panic!("{event:?} re-encoded does not decode ({e}): {wire:02x?}"));
        assert!(same(&back, event), "{event:?} came back as {back:?}");
        all.extend_from_slice(&wire);

        let general = match event {
            Event::Enqueue {
                queue,
                position,
                message,
            } => Some(section(vec![
                Value::string("enq"),
                Value::string(queue),
                Value::Ulong(*position),
                Value::Binary(message.clone()),
            ])),
            Event::Dequeue { queue, positions } => Some(section(vec![
                Value::string("deq"),
                Value::string(queue),
                Value::List(positions.iter().map(|p| Value::Ulong(*p)).collect()),
            ])),
            _ => None,
        };
        if let Some(general) = general {
            let back = Event::decode(&general).unwrap_or_else(|e| {
                panic!("{event:?} in the general layout does not decode ({e}): {general:02x?}")
            });
            assert!(same(&back, event), "{event:?} came back as {back:?}");
        }
    }
    let all = all.freeze();
    let back = Event::decode_all(&all)
        .unwrap_or_else(|e| panic!("{events:?} re-encoded do not decode ({e}): {all:02x?}"));
    assert!(same(&back, &events), "{events:?} came back as {back:?}");
}
