// The bodies of the `performative`, `message_sections` and
// `management_request` fuzz targets, shared with their stable stand-in
// `shards/tests/fuzz_amqp.rs`: both `include!` this file, so it names its own
// imports and needs only `bytes` and `tandem_shards`.

/// Whether two decoded things are the same. `PartialEq` is not enough: a float
/// that is NaN is unequal to itself, though it encodes to the same bits, so a
/// mismatch is checked again on the `Debug` text (which prints every float
/// exactly and every NaN alike).
fn same<T: PartialEq + std::fmt::Debug>(a: &T, b: &T) -> bool {
    a == b || format!("{a:?}") == format!("{b:?}")
}

/// Arbitrary bytes as an AMQP value, a performative and a SASL frame. What
/// decodes encodes to bytes that decode to the same thing (for a value: that
/// re-encode to the same bytes), and skipping a value covers exactly the
/// bytes decoding it read (the message scanner skips sections).
fn performative_body(data: &[u8]) {
    use bytes::{Bytes, BytesMut};
    use tandem_shards::amqp::codec::{decode_exact, Decoder};
    use tandem_shards::amqp::performative::{Performative, SaslFrame};

    let bytes = Bytes::copy_from_slice(data);
    let mut d = Decoder::new(bytes.clone());
    if let Ok(value) = d.value() {
        let mut skipped = Decoder::new(bytes.clone());
        match skipped.skip() {
            Ok(()) => assert_eq!(skipped.position(), d.position(), "{data:02x?}"),
            Err(e) => panic!("{value:?} decodes but does not skip ({e}): {data:02x?}"),
        }
        let once = value.to_bytes();
        let again = decode_exact(once.clone())
            .unwrap_or_else(|e| panic!("{value:?} re-encoded does not decode ({e}): {once:02x?}"));
        // The same bytes: the same value (a decoded value has one encoding),
        // without comparing trees that may hold NaN.
        assert_eq!(again.to_bytes(), once, "{value:?} came back as {again:?}");
    }

    if let Ok((perf, payload)) = Performative::decode(bytes.clone()) {
        let mut out = BytesMut::new();
        perf.encode(&mut out);
        out.extend_from_slice(&payload);
        let wire = out.freeze();
        let (back, back_payload) = Performative::decode(wire.clone())
            .unwrap_or_else(|e| panic!("{perf:?} re-encoded does not decode ({e}): {wire:02x?}"));
        assert!(same(&back, &perf), "{perf:?} came back as {back:?}");
        assert_eq!(back_payload, payload, "{perf:?}: the payload moved");
    }

    if let Ok(frame) = SaslFrame::decode(bytes) {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        let wire = out.freeze();
        let back = SaslFrame::decode(wire.clone())
            .unwrap_or_else(|e| panic!("{frame:?} re-encoded does not decode ({e}): {wire:02x?}"));
        assert_eq!(back, frame);
    }
}

/// Arbitrary bytes as a message, read the ways the broker and the store read
/// one: the section scan, the header, subject, `to`, application properties,
/// the tools' decoded view, the store's durable check, and the redelivery
/// rewrite of the header. Nothing panics; the sections found lie in order
/// inside the message; a header the broker writes reads back as written, and
/// the store's quick durable check agrees with the header the broker reads.
fn message_sections_body(data: &[u8]) {
    use bytes::Bytes;
    use tandem_shards::amqp::message::{
        application_properties, durable, scan, subject, to_address, with_header, DecodedMessage,
        Header,
    };

    let raw = Bytes::copy_from_slice(data);
    let _ = DecodedMessage::decode(&raw);
    let _ = to_address(&raw);
    let quick_durable = durable(data);
    let Ok(map) = scan(&raw) else {
        return;
    };
    assert!(map.body_start <= raw.len(), "{map:?}");
    for (start, end) in [map.header, map.properties, map.application_properties]
        .into_iter()
        .flatten()
    {
        assert!(
            start < end && end <= map.body_start,
            "{map:?} of {data:02x?}"
        );
    }
    let subject_before = subject(&raw, &map);
    let properties_before = application_properties(&raw, &map);

    let Ok(header) = Header::read(&raw, &map) else {
        return;
    };
    let header_first = map.header.is_none_or(|(start, _)| start == 0);
    if header_first {
        assert_eq!(
            quick_durable, header.durable,
            "the store's durable check disagrees with {header:?}: {data:02x?}"
        );
    }

    // Redelivery: a new delivery-count and first-acquirer.
    let redelivered = Header {
        delivery_count: header.delivery_count.wrapping_add(1),
        first_acquirer: false,
        ..header.clone()
    };
    let rewritten = with_header(&raw, &map, &redelivered);
    let again = scan(&rewritten)
        .unwrap_or_else(|e| panic!("rewritten {rewritten:02x?} does not scan: {e}"));
    let read_back = Header::read(&rewritten, &again)
        .unwrap_or_else(|e| panic!("rewritten header of {rewritten:02x?} does not read: {e}"));
    assert_eq!(read_back, redelivered, "{data:02x?}");
    assert_eq!(durable(&rewritten), redelivered.durable, "{rewritten:02x?}");
    if header_first {
        // Only the header changed: what routing reads did not.
        assert!(same(&subject(&rewritten, &again), &subject_before));
        assert!(same(
            &application_properties(&rewritten, &again),
            &properties_before
        ));
    }
}

/// A management request as the broker reads one: the message decoded, the
/// request read from it, and a queue's settings from its body (what CREATE
/// does), and the same bytes as a reply (what the tools read). Nothing
/// panics; a request or reply re-encoded reads back the same, and settings
/// survive a round trip through their attribute map (the replication stream
/// and the store's configuration file carry them so).
///
/// Input: `data[0]` bit 0 clear: the rest is the message. Set: a request is
/// built around it: `data[1]` picks the operation, `data[2]` the entity type,
/// and the rest is attributes, each a byte picking the name and an AMQP value.
fn management_request_body(data: &[u8]) {
    use bytes::Bytes;
    use tandem_shards::amqp::codec::{Decoder, Value};
    use tandem_shards::amqp::message::{DecodedMessage, MessageBuilder};
    use tandem_shards::management::{Request, Response};
    use tandem_shards::queue::QueueSettings;

    const OPERATIONS: [&str; 6] = ["CREATE", "read", "UPDATE", "DELETE", "QUERY", "x"];
    const TYPES: [&str; 6] = [
        "queue",
        "org.apache.qpid.broker:exchange",
        "binding",
        "broker",
        "connection",
        "",
    ];
    const ATTRIBUTES: [&str; 12] = [
        "max-queue-size",
        "max-queue-count",
        "limit-policy",
        "durable",
        "auto-delete",
        "lvq-key",
        "qpid.replicate",
        "replicate",
        "replica-of",
        "name",
        "type",
        "x-other",
    ];

    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let raw = if mode & 1 == 0 {
        Bytes::copy_from_slice(rest)
    } else {
        let [op, kind, attrs @ ..] = rest else {
            return;
        };
        let mut body = Vec::new();
        let mut left = Bytes::copy_from_slice(attrs);
        while let Some(&pick) = left.first() {
            let mut d = Decoder::new(left.slice(1..));
            let Ok(value) = d.value() else {
                break;
            };
            let name = ATTRIBUTES[usize::from(pick) % ATTRIBUTES.len()];
            body.push((Value::string(name), value));
            left = left.slice(1 + d.position()..);
        }
        MessageBuilder {
            message_id: Some(Value::Ulong(7)),
            reply_to: Some("reply".into()),
            application_properties: vec![
                (
                    "operation".into(),
                    Value::string(OPERATIONS[usize::from(*op) % OPERATIONS.len()]),
                ),
                (
                    "type".into(),
                    Value::string(TYPES[usize::from(*kind) % TYPES.len()]),
                ),
                ("name".into(), Value::string("q")),
            ],
            body: Some(Value::Map(body)),
            ..Default::default()
        }
        .encode()
    };

    let Ok(message) = DecodedMessage::decode(&raw) else {
        return;
    };
    if let Ok(request) = Request::decode(&message) {
        let wire = request.encode("reply", 9);
        let decoded = DecodedMessage::decode(&wire)
            .unwrap_or_else(|e| panic!("{request:?} encoded does not decode: {e}"));
        let back = Request::decode(&decoded)
            .unwrap_or_else(|e| panic!("{request:?} encoded does not read back: {e}"));
        assert!(same(&back, &request), "{request:?} came back as {back:?}");

        if let Ok(settings) = QueueSettings::default().with_attributes(&request.body) {
            let attributes = settings.attributes();
            let back = QueueSettings::default().with_attributes(&attributes);
            assert_eq!(back, Ok(settings), "{attributes:?} of {:?}", request.body);
        }
    }
    if let Ok(response) = Response::decode(&message) {
        let wire = response.encode("to", Some(Value::Ulong(9)));
        let decoded = DecodedMessage::decode(&wire)
            .unwrap_or_else(|e| panic!("{response:?} encoded does not decode: {e}"));
        let back = Response::decode(&decoded)
            .unwrap_or_else(|e| panic!("{response:?} encoded does not read back: {e}"));
        assert!(same(&back, &response), "{response:?} came back as {back:?}");
    }
}
