//! Message sections (spec part 3.2). A message is kept as the bytes it arrived in;
//! the broker reads only what routing needs (header flags, subject, application
//! properties) and rewrites the header only when it must (redelivery).

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{CodecError, Decoder, ListWriter, Value};

pub const HEADER: u64 = 0x70;
pub const DELIVERY_ANNOTATIONS: u64 = 0x71;
pub const MESSAGE_ANNOTATIONS: u64 = 0x72;
pub const PROPERTIES: u64 = 0x73;
pub const APPLICATION_PROPERTIES: u64 = 0x74;
pub const DATA: u64 = 0x75;
pub const AMQP_SEQUENCE: u64 = 0x76;
pub const AMQP_VALUE: u64 = 0x77;
pub const FOOTER: u64 = 0x78;

/// Where each section of interest sits in the message bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SectionMap {
    /// Byte range of the header section, if present.
    pub header: Option<(usize, usize)>,
    pub properties: Option<(usize, usize)>,
    pub application_properties: Option<(usize, usize)>,
    /// Offset where the body sections start.
    pub body_start: usize,
}

/// Finds the sections of an encoded message without decoding their contents.
pub fn scan(raw: &Bytes) -> Result<SectionMap, CodecError> {
    let mut d = Decoder::new(raw.clone());
    let mut map = SectionMap {
        body_start: raw.len(),
        ..Default::default()
    };
    while !d.is_empty() {
        let start = d.position();
        let code = section_code(raw, start)?;
        d.skip()?;
        let range = Some((start, d.position()));
        match code {
            HEADER => map.header = range,
            PROPERTIES => map.properties = range,
            APPLICATION_PROPERTIES => map.application_properties = range,
            DELIVERY_ANNOTATIONS | MESSAGE_ANNOTATIONS => {}
            _ => {
                map.body_start = start;
                break;
            }
        }
    }
    Ok(map)
}

/// Reads the descriptor code of the section starting at `at`.
fn section_code(raw: &Bytes, at: usize) -> Result<u64, CodecError> {
    let wrong = CodecError::WrongType {
        field: "message section",
        expected: "described section",
        found: "other",
    };
    match raw.get(at..at + 2) {
        Some([0x00, 0x53]) => raw.get(at + 2).map(|c| u64::from(*c)).ok_or(wrong),
        Some([0x00, 0x80]) => raw
            .get(at + 2..at + 10)
            .map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                u64::from_be_bytes(a)
            })
            .ok_or(wrong),
        Some([0x00, _]) => Ok(u64::MAX), // symbolic descriptor: treat as body
        _ => Err(wrong),
    }
}

fn section_list(raw: &Bytes, range: (usize, usize)) -> Result<Vec<Value>, CodecError> {
    match Decoder::new(raw.slice(range.0..range.1)).value()? {
        Value::Described(_, body) => match *body {
            Value::List(items) => Ok(items),
            other => Err(CodecError::WrongType {
                field: "message section",
                expected: "list",
                found: other.type_name(),
            }),
        },
        other => Err(CodecError::WrongType {
            field: "message section",
            expected: "described list",
            found: other.type_name(),
        }),
    }
}

/// The fields of the header section the broker cares about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    pub durable: bool,
    pub priority: Option<u8>,
    pub ttl: Option<u32>,
    pub first_acquirer: bool,
    pub delivery_count: u32,
}

impl Header {
    pub fn read(raw: &Bytes, map: &SectionMap) -> Result<Header, CodecError> {
        let Some(range) = map.header else {
            return Ok(Header::default());
        };
        let f = section_list(raw, range)?;
        Ok(Header {
            durable: matches!(f.first(), Some(Value::Bool(true))),
            priority: match f.get(1) {
                Some(Value::Ubyte(p)) => Some(*p),
                _ => None,
            },
            ttl: match f.get(2) {
                Some(Value::Uint(t)) => Some(*t),
                _ => None,
            },
            first_acquirer: matches!(f.get(3), Some(Value::Bool(true))),
            delivery_count: match f.get(4) {
                Some(Value::Uint(n)) => *n,
                _ => 0,
            },
        })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let mut w = ListWriter::new(out, HEADER);
        w.flag(self.durable);
        match self.priority {
            Some(p) => w.ubyte(p),
            None => w.null(),
        };
        w.opt_uint(self.ttl).flag(self.first_acquirer);
        if self.delivery_count > 0 {
            w.uint(self.delivery_count);
        }
        w.finish();
    }
}

/// The subject (the routing key when sent to an exchange).
pub fn subject(raw: &Bytes, map: &SectionMap) -> Result<Option<String>, CodecError> {
    let Some(range) = map.properties else {
        return Ok(None);
    };
    let f = section_list(raw, range)?;
    Ok(f.get(3).and_then(|v| v.as_str()).map(str::to_owned))
}

/// The application-properties map, if any.
pub fn application_properties(raw: &Bytes, map: &SectionMap) -> Result<Option<Value>, CodecError> {
    let Some((start, end)) = map.application_properties else {
        return Ok(None);
    };
    match Decoder::new(raw.slice(start..end)).value()? {
        Value::Described(_, body) => Ok(Some(*body)),
        other => Err(CodecError::WrongType {
            field: "application-properties",
            expected: "described map",
            found: other.type_name(),
        }),
    }
}

/// The message re-encoded with a new header (for redelivery: delivery-count and
/// first-acquirer change). Everything after the old header is shared, not copied.
pub fn with_header(raw: &Bytes, map: &SectionMap, header: &Header) -> Bytes {
    let rest_start = map.header.map(|(_, end)| end).unwrap_or(0);
    let rest = raw.slice(rest_start..);
    let mut out = BytesMut::with_capacity(32 + rest.len());
    header.encode(&mut out);
    out.put_slice(&rest);
    out.freeze()
}

/// The `to` field of a message's properties.
pub fn to_address(payload: &Bytes) -> Option<String> {
    let map = scan(payload).ok()?;
    let (start, end) = map.properties?;
    match Decoder::new(payload.slice(start..end)).value().ok()? {
        Value::Described(_, body) => match *body {
            Value::List(items) => items.get(2).and_then(|v| v.as_str()).map(str::to_owned),
            _ => None,
        },
        _ => None,
    }
}

/// Builds messages for our own tools and tests.
#[derive(Debug, Clone, Default)]
pub struct MessageBuilder {
    pub durable: bool,
    pub message_id: Option<Value>,
    pub to: Option<String>,
    pub subject: Option<String>,
    pub reply_to: Option<String>,
    pub correlation_id: Option<Value>,
    pub creation_time: Option<i64>,
    pub application_properties: Vec<(String, Value)>,
    pub body: Option<Value>,
}

impl MessageBuilder {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        if self.durable {
            Header {
                durable: true,
                ..Default::default()
            }
            .encode(&mut out);
        }
        if self.message_id.is_some()
            || self.to.is_some()
            || self.subject.is_some()
            || self.reply_to.is_some()
            || self.correlation_id.is_some()
            || self.creation_time.is_some()
        {
            let mut w = ListWriter::new(&mut out, PROPERTIES);
            w.opt_value(self.message_id.as_ref())
                .null()
                .opt_string(self.to.as_deref())
                .opt_string(self.subject.as_deref())
                .opt_string(self.reply_to.as_deref())
                .opt_value(self.correlation_id.as_ref())
                .null()
                .null()
                .null();
            match self.creation_time {
                Some(t) => w.value(&Value::Timestamp(t)),
                None => w.null(),
            };
            w.finish();
        }
        if !self.application_properties.is_empty() {
            let map = Value::Map(
                self.application_properties
                    .iter()
                    .map(|(k, v)| (Value::String(k.clone()), v.clone()))
                    .collect(),
            );
            Value::Described(
                Box::new(Value::Ulong(APPLICATION_PROPERTIES)),
                Box::new(map),
            )
            .encode(&mut out);
        }
        if let Some(body) = &self.body {
            match body {
                Value::Binary(b) => Value::Described(
                    Box::new(Value::Ulong(DATA)),
                    Box::new(Value::Binary(b.clone())),
                )
                .encode(&mut out),
                other => {
                    Value::Described(Box::new(Value::Ulong(AMQP_VALUE)), Box::new(other.clone()))
                        .encode(&mut out)
                }
            }
        }
        out.freeze()
    }
}

/// A decoded view of a message for tools: properties and body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecodedMessage {
    pub header: Header,
    pub subject: Option<String>,
    pub correlation_id: Option<Value>,
    pub reply_to: Option<String>,
    pub message_id: Option<Value>,
    pub application_properties: Option<Value>,
    /// The amqp-value, or the data section as binary.
    pub body: Option<Value>,
}

impl DecodedMessage {
    pub fn decode(raw: &Bytes) -> Result<DecodedMessage, CodecError> {
        let map = scan(raw)?;
        let mut m = DecodedMessage {
            header: Header::read(raw, &map)?,
            application_properties: application_properties(raw, &map)?,
            ..Default::default()
        };
        if let Some(range) = map.properties {
            let f = section_list(raw, range)?;
            let get = |i: usize| f.get(i).filter(|v| !v.is_null()).cloned();
            m.message_id = get(0);
            m.subject = get(3).and_then(|v| v.as_str().map(str::to_owned));
            m.reply_to = get(4).and_then(|v| v.as_str().map(str::to_owned));
            m.correlation_id = get(5);
        }
        let mut d = Decoder::new(raw.slice(map.body_start..));
        if !d.is_empty() {
            if let Value::Described(_, body) = d.value()? {
                m.body = Some(*body);
            }
        }
        Ok(m)
    }
}

/// Whether a message's header says `durable` (a message without a header is
/// not durable), read from the first bytes without decoding the message (the
/// store asks it of every message on a durable queue).
pub fn durable(raw: &[u8]) -> bool {
    // The descriptor as a smallulong or a ulong: the decoder reads either.
    let Some(rest) = raw
        .strip_prefix(&[0x00, 0x53, 0x70])
        .or_else(|| raw.strip_prefix(&[0x00, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x70]))
    else {
        return false;
    };
    // list8: code, size, count, fields; list32: code, size u32, count u32.
    let (count_at, fields_at, width) = match rest.first() {
        Some(0xc0) => (2, 3, 1),
        Some(0xd0) => (5, 9, 4),
        _ => return false,
    };
    let no_fields = rest
        .get(count_at..count_at + width)
        .is_none_or(|c| c.iter().all(|b| *b == 0));
    let first = if no_fields {
        None
    } else {
        rest.get(fields_at..)
    };
    // `true`, or a boolean byte that is not 0 (as the decoder reads it, so the
    // store keeps every message the broker's header says is durable).
    matches!(first, Some([0x41, ..] | [0x56, 0x01..=0xff, ..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_output_scans_and_decodes() {
        let raw = MessageBuilder {
            durable: true,
            subject: Some("news.sport".into()),
            application_properties: vec![("colour".into(), Value::string("red"))],
            body: Some(Value::string("hello")),
            ..Default::default()
        }
        .encode();
        let map = scan(&raw).expect("scans");
        assert_eq!(
            subject(&raw, &map).expect("ok").as_deref(),
            Some("news.sport")
        );
        let props = application_properties(&raw, &map)
            .expect("ok")
            .expect("present");
        assert_eq!(props.map_get("colour"), Some(&Value::string("red")));
        assert!(Header::read(&raw, &map).expect("ok").durable);
        let decoded = DecodedMessage::decode(&raw).expect("decodes");
        assert_eq!(decoded.body, Some(Value::string("hello")));
    }

    #[test]
    fn redelivery_rewrites_only_the_header() {
        let raw = MessageBuilder {
            body: Some(Value::string("x")),
            ..Default::default()
        }
        .encode();
        let map = scan(&raw).expect("scans");
        let again = with_header(
            &raw,
            &map,
            &Header {
                delivery_count: 2,
                ..Default::default()
            },
        );
        let decoded = DecodedMessage::decode(&again).expect("decodes");
        assert_eq!(decoded.header.delivery_count, 2);
        assert_eq!(decoded.body, Some(Value::string("x")));
    }

    fn headed(durable: bool) -> Vec<u8> {
        let mut out = BytesMut::new();
        Header {
            durable,
            ..Default::default()
        }
        .encode(&mut out);
        out.extend_from_slice(b"\x00\x53\x77\xa1\x02hi");
        out.to_vec()
    }

    #[test]
    fn the_header_says_whether_a_message_is_durable() {
        assert!(durable(&headed(true)));
        assert!(!durable(&headed(false)));
        assert!(!durable(b"\x00\x53\x77\xa1\x02hi"), "no header");
        assert!(!durable(b"\x00\x53\x70\x45"), "an empty header list");
        assert!(
            !durable(b"\x00\x53\x70\xc0\x01\x00"),
            "a header of no fields"
        );
        assert!(durable(
            b"\x00\x53\x70\xd0\x00\x00\x00\x05\x00\x00\x00\x01\x41"
        ));
        assert!(durable(b"\x00\x53\x70\xc0\x03\x01\x56\x01"));
        assert!(!durable(b"\x00\x53\x70\xc0"), "cut short");
        assert!(!durable(b""));
    }

    /// Found by the `message_sections` fuzz target: the store's check said
    /// "not durable" where the header the broker reads says durable.
    #[test]
    fn the_durable_check_reads_the_header_as_the_decoder_does() {
        for raw in [
            &b"\x00\x53\x70\xd0\x00\x00\x00\x06\x00\x00\x00\x01\x56\x5e\x00\x53\x77\x40"[..],
            b"\x00\x80\x00\x00\x00\x00\x00\x00\x00\x70\xc0\x02\x01\x41",
        ] {
            let raw = Bytes::copy_from_slice(raw);
            let header = Header::read(&raw, &scan(&raw).expect("scans")).expect("reads");
            assert!(header.durable, "{raw:02x?}");
            assert!(durable(&raw), "{raw:02x?}");
        }
        assert!(!durable(b"\x00\x53\x70\xc0\x03\x01\x56\x00"));
    }
}
