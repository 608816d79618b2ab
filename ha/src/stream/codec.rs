//! The replication stream's wire codec: the events a primary streams to each
//! backup over one AMQP link (configuration, catch-up and live
//! enqueues/dequeues with 64-bit positions, membership) and their encoding.
//!
//! On the wire each event is an amqp-sequence section holding a list, and one
//! replication message (delivery) carries one or more of them, in order:
//! `["queue", name, attrs]`, `["queue-reset", name, attrs]`,
//! `["queue-sync", name, attrs, next-position, [first, last, ...]]`, `["queue-delete", name]`,
//! `["exchange", name, type, attrs]`, `["exchange-delete", name]`,
//! `["bind", exchange, queue, key]`, `["unbind", exchange, queue, key]`,
//! `["enq", queue, position, message]`, `["deq", queue, [positions]]`,
//! `["members", epoch, [{broker-id, address, status}]]`,
//! `["inventory", [queue names], [exchange names]]`, `["sync", id]`.

use bytes::{BufMut, Bytes, BytesMut};

use tandem_shards::amqp::codec::{Decoder, Value};
use tandem_shards::broker::ConfigOp;
use tandem_shards::exchange::{BindingKey, ExchangeType};
use tandem_shards::queue::QueueSettings;

/// The node a backup attaches its replication receiver to on the primary.
pub const NODE: &str = "$ha.replication";

/// One replication event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A configuration change, as the backup applies it through its own
    /// ordering point: `ReplaceQueue` (a `DeclareQueue` with a name is sent
    /// the same way), `DeleteQueue`, `DeclareExchange`, `DeleteExchange`,
    /// `Bind`, `Unbind`. The catalogue's own type, so the stream and the
    /// catalogue cannot drift apart.
    Config(ConfigOp),
    /// Declare, and drop any messages the backup held (start of a snapshot).
    QueueReset {
        name: String,
        settings: QueueSettings,
    },
    /// Declare, keep the messages held at the positions of `keep` and drop
    /// the others (start of an incremental catch-up: the backup said what it
    /// held when it attached; what it lacks follows as `enq` events). The
    /// primary gives new messages positions from `next` on, so a dropped
    /// position at or beyond it was one the backup had and the primary never
    /// did.
    QueueSync {
        name: String,
        settings: QueueSettings,
        next: u64,
        keep: Vec<(u64, u64)>,
    },
    Enqueue {
        queue: String,
        position: u64,
        message: Bytes,
    },
    Dequeue {
        queue: String,
        positions: Vec<u64>,
    },
    Members {
        epoch: u64,
        members: Vec<(String, String, String)>,
    },
    /// Every replicated queue and exchange on the primary when the backup
    /// connected: the backup deletes what it holds that is not listed (deleted
    /// while it was away).
    Inventory {
        queues: Vec<String>,
        exchanges: Vec<String>,
    },
    /// A marker: once the backup settles it, it has applied every event
    /// before it (`tandem-config --sync` waits for it).
    Sync {
        id: u64,
    },
}

fn s(v: &str) -> Value {
    Value::string(v)
}

/// The wire form of a configuration change.
fn config_items(op: &ConfigOp) -> Vec<Value> {
    match op {
        ConfigOp::ReplaceQueue { name, settings }
        | ConfigOp::DeclareQueue {
            name: Some(name),
            settings,
            ..
        } => vec![s("queue"), s(name), settings.attributes()],
        // A temporary queue is never replicated; an empty name fails to decode.
        ConfigOp::DeclareQueue { name: None, .. } => vec![s("queue"), s("")],
        ConfigOp::DeleteQueue { name, .. } => vec![s("queue-delete"), s(name)],
        ConfigOp::DeclareExchange {
            name,
            kind,
            durable,
            replicate,
        } => vec![
            s("exchange"),
            s(name),
            s(kind.as_str()),
            Value::Map(vec![
                (s("durable"), Value::Bool(*durable)),
                (
                    s("replicate"),
                    replicate.as_deref().map(s).unwrap_or(Value::Null),
                ),
            ]),
        ],
        ConfigOp::DeleteExchange { name } => vec![s("exchange-delete"), s(name)],
        ConfigOp::Bind {
            exchange,
            queue,
            key,
        } => vec![s("bind"), s(exchange), s(queue), key.to_value()],
        ConfigOp::Unbind {
            exchange,
            queue,
            key,
        } => vec![s("unbind"), s(exchange), s(queue), key.to_value()],
    }
}

/// The amqp-sequence section descriptor: every event is one such section, so a
/// delivery may carry several (a message body of amqp-sequence sections).
const AMQP_SEQUENCE: u64 = 0x76;
const SECTION: [u8; 3] = [0x00, 0x53, AMQP_SEQUENCE as u8];

/// An encoded event: `head` followed by `tail` on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub head: Bytes,
    pub tail: Bytes,
}

impl Encoded {
    /// The `enq` event for `message` at `position` of `queue`. The header is
    /// the amqp-sequence section holding `["enq", queue, position, binary]` up to
    /// the binary's length; the message itself follows as the tail, shared with
    /// the queue (and with every other backup's copy of the event).
    pub fn enqueue(queue: &str, position: u64, message: Bytes) -> Encoded {
        let message_len = u32::try_from(message.len()).unwrap_or(u32::MAX);
        // count, "enq", queue, ulong, vbin32 constructor and length, message
        let size = 4 + 5 + str_bytes(queue) + 9 + 5 + message.len();
        let mut head = BytesMut::with_capacity(SECTION.len() + 5 + size - message.len());
        head.put_slice(&SECTION);
        head.put_u8(0xd0); // list32: size, count, items
        head.put_u32(u32::try_from(size).unwrap_or(u32::MAX));
        head.put_u32(4);
        put_str(&mut head, "enq");
        put_str(&mut head, queue);
        head.put_u8(0x80);
        head.put_u64(position);
        head.put_u8(0xb0); // vbin32
        head.put_u32(message_len);
        Encoded {
            head: head.freeze(),
            tail: message,
        }
    }

    /// The `deq` event for `positions` of `queue`, written straight into
    /// bytes (one is sent per batch of consumed messages, so its encoding is
    /// on the message path): an amqp-sequence section holding a list32 of
    /// `["deq", queue, list32 of ulongs]`, which the general decoder reads
    /// too.
    pub fn dequeue(queue: &str, positions: &[u64]) -> Encoded {
        let list_bytes = 4 + 9 * positions.len();
        let size = 4 + 5 + str_bytes(queue) + 5 + list_bytes;
        let mut head = BytesMut::with_capacity(SECTION.len() + 5 + size);
        head.put_slice(&SECTION);
        head.put_u8(0xd0);
        head.put_u32(u32::try_from(size).unwrap_or(u32::MAX));
        head.put_u32(3);
        put_str(&mut head, "deq");
        put_str(&mut head, queue);
        head.put_u8(0xd0);
        head.put_u32(u32::try_from(list_bytes).unwrap_or(u32::MAX));
        head.put_u32(u32::try_from(positions.len()).unwrap_or(u32::MAX));
        for p in positions {
            head.put_u8(0x80);
            head.put_u64(*p);
        }
        Encoded {
            head: head.freeze(),
            tail: Bytes::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Event {
    /// The event as a message to send on the replication link.
    pub fn encode(&self) -> Bytes {
        let parts = self.encode_parts();
        if parts.tail.is_empty() {
            return parts.head;
        }
        let mut out = BytesMut::with_capacity(parts.len());
        out.put_slice(&parts.head);
        out.put_slice(&parts.tail);
        out.freeze()
    }

    /// The event's encoding in two pieces, sent back to back: an `enq` event's
    /// message is its own piece, never copied into the event.
    pub fn encode_parts(&self) -> Encoded {
        if let Event::Enqueue {
            queue,
            position,
            message,
        } = self
        {
            return Encoded::enqueue(queue, *position, message.clone());
        }
        if let Event::Dequeue { queue, positions } = self {
            return Encoded::dequeue(queue, positions);
        }
        let list = match self {
            Event::Config(op) => config_items(op),
            Event::QueueReset { name, settings } => {
                vec![s("queue-reset"), s(name), settings.attributes()]
            }
            Event::QueueSync {
                name,
                settings,
                next,
                keep,
            } => vec![
                s("queue-sync"),
                s(name),
                settings.attributes(),
                Value::Ulong(*next),
                ranges_value(keep),
            ],
            Event::Enqueue { .. } => unreachable!("encoded above"),
            Event::Dequeue { .. } => unreachable!("encoded above"),
            Event::Inventory { queues, exchanges } => vec![
                s("inventory"),
                Value::List(queues.iter().map(|q| s(q)).collect()),
                Value::List(exchanges.iter().map(|e| s(e)).collect()),
            ],
            Event::Sync { id } => vec![s("sync"), Value::Ulong(*id)],
            Event::Members { epoch, members } => vec![
                s("members"),
                Value::Ulong(*epoch),
                Value::List(
                    members
                        .iter()
                        .map(|(id, addr, st)| Value::List(vec![s(id), s(addr), s(st)]))
                        .collect(),
                ),
            ],
        };
        let mut head = BytesMut::new();
        head.put_slice(&SECTION);
        Value::List(list).encode(&mut head);
        Encoded {
            head: head.freeze(),
            tail: Bytes::new(),
        }
    }

    /// Reads the one event of a replication message, or says what is wrong.
    pub fn decode(payload: &Bytes) -> Result<Event, String> {
        let mut events = Event::decode_all(payload)?;
        match (events.pop(), events.is_empty()) {
            (Some(event), true) => Ok(event),
            _ => Err("expected exactly one replication event".into()),
        }
    }

    /// Reads every event of a replication message: its body is one
    /// amqp-sequence section per event.
    pub fn decode_all(payload: &Bytes) -> Result<Vec<Event>, String> {
        let mut events = Vec::new();
        let mut at = 0;
        while at < payload.len() {
            // Nearly every event is an `enq` as `Encoded::enqueue` lays it out:
            // read it in place, without a tree of values.
            if let Some((event, end)) = enqueue_in_place(payload, at) {
                events.push(event);
                at = end;
                continue;
            }
            if let Some((event, end)) = dequeue_in_place(payload, at) {
                events.push(event);
                at = end;
                continue;
            }
            let mut d = Decoder::new(payload.slice(at..));
            let items = match d.value().map_err(|e| e.to_string())? {
                Value::Described(code, body) if code.as_u64() == Some(AMQP_SEQUENCE) => match *body
                {
                    Value::List(items) => items,
                    other => {
                        return Err(format!(
                            "replication section holds {}, not a list",
                            other.type_name()
                        ))
                    }
                },
                other => {
                    return Err(format!(
                        "replication message section is {}, not an amqp-sequence",
                        other.type_name()
                    ))
                }
            };
            events.push(Event::from_items(items)?);
            at += d.position();
        }
        if events.is_empty() {
            return Err("replication message without events".into());
        }
        Ok(events)
    }

    fn from_items(items: Vec<Value>) -> Result<Event, String> {
        let text = |i: usize| items.get(i).and_then(Value::as_str).map(str::to_owned);
        let name = || {
            text(1)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| "replication event without a name".to_string())
        };
        let kind = text(0).ok_or("replication event without a type")?;
        Ok(match kind.as_str() {
            "queue" | "queue-reset" => {
                let settings = QueueSettings::default()
                    .with_attributes(items.get(2).unwrap_or(&Value::Null))
                    .map_err(|e| format!("queue settings: {e}"))?;
                let name = name()?;
                if kind == "queue" {
                    Event::Config(ConfigOp::ReplaceQueue { name, settings })
                } else {
                    Event::QueueReset { name, settings }
                }
            }
            "queue-sync" => Event::QueueSync {
                settings: QueueSettings::default()
                    .with_attributes(items.get(2).unwrap_or(&Value::Null))
                    .map_err(|e| format!("queue settings: {e}"))?,
                name: name()?,
                next: items
                    .get(3)
                    .and_then(Value::as_u64)
                    .ok_or("queue-sync without a next position")?,
                keep: items
                    .get(4)
                    .and_then(ranges_from_value)
                    .ok_or("queue-sync without valid position ranges")?,
            },
            "queue-delete" => Event::Config(ConfigOp::DeleteQueue {
                name: name()?,
                if_unused: false,
            }),
            "exchange" => {
                let attrs = items.get(3).cloned().unwrap_or(Value::Null);
                Event::Config(ConfigOp::DeclareExchange {
                    name: name()?,
                    kind: text(2)
                        .as_deref()
                        .and_then(ExchangeType::parse)
                        .ok_or("exchange event without a valid type")?,
                    durable: matches!(attrs.map_get("durable"), Some(Value::Bool(true))),
                    replicate: attrs
                        .map_get("replicate")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                })
            }
            "exchange-delete" => Event::Config(ConfigOp::DeleteExchange { name: name()? }),
            "bind" | "unbind" => {
                let exchange = name()?;
                let queue = text(2).ok_or("binding event without a queue")?;
                let key = BindingKey::from_value(items.get(3).unwrap_or(&Value::Null));
                Event::Config(ConfigOp::binding(kind == "bind", exchange, queue, key))
            }
            "enq" => Event::Enqueue {
                queue: name()?,
                position: items
                    .get(2)
                    .and_then(Value::as_u64)
                    .ok_or("enq without a position")?,
                message: match items.get(3) {
                    Some(Value::Binary(b)) => b.clone(),
                    _ => return Err("enq without a message".into()),
                },
            },
            "deq" => Event::Dequeue {
                queue: name()?,
                positions: match items.get(2) {
                    Some(Value::List(ps)) => ps.iter().filter_map(Value::as_u64).collect(),
                    _ => return Err("deq without positions".into()),
                },
            },
            "members" => Event::Members {
                epoch: items.get(1).and_then(Value::as_u64).unwrap_or(0),
                members: match items.get(2) {
                    Some(Value::List(ms)) => ms
                        .iter()
                        .filter_map(|m| match m {
                            Value::List(f) => Some((
                                f.first()?.as_str()?.to_owned(),
                                f.get(1)?.as_str()?.to_owned(),
                                f.get(2)?.as_str()?.to_owned(),
                            )),
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                },
            },
            "inventory" => {
                let names = |i: usize| match items.get(i) {
                    Some(Value::List(v)) => v
                        .iter()
                        .filter_map(|n| n.as_str().map(str::to_owned))
                        .collect(),
                    _ => Vec::new(),
                };
                Event::Inventory {
                    queues: names(1),
                    exchanges: names(2),
                }
            }
            "sync" => Event::Sync {
                id: items
                    .get(1)
                    .and_then(Value::as_u64)
                    .ok_or("sync without an id")?,
            },
            other => return Err(format!("unknown replication event '{other}'")),
        })
    }
}

/// Position ranges on the wire: one list of ulongs, first and last of each
/// range in turn.
pub(crate) fn ranges_value(ranges: &[(u64, u64)]) -> Value {
    Value::List(
        ranges
            .iter()
            .flat_map(|&(first, last)| [Value::Ulong(first), Value::Ulong(last)])
            .collect(),
    )
}

/// Position ranges from their wire form; `None` unless it is a list of an
/// even number of ulongs making sorted, disjoint ranges.
pub(crate) fn ranges_from_value(value: &Value) -> Option<Vec<(u64, u64)>> {
    let Value::List(items) = value else {
        return None;
    };
    if items.len() % 2 != 0 {
        return None;
    }
    let ranges = items
        .chunks(2)
        .map(|pair| Some((pair[0].as_u64()?, pair[1].as_u64()?)))
        .collect::<Option<Vec<_>>>()?;
    tandem_shards::ranges::well_formed(&ranges).then_some(ranges)
}

/// The `enq` event at `at` if it has exactly the layout [`Encoded::enqueue`]
/// writes (an amqp-sequence section of a list32 of 4: a string `enq`, the
/// queue's name, a ulong position and a vbin32 message), with the offset just
/// past it; `None` for any other layout, which the general decoder reads (and
/// judges). The message is a slice of `payload`, not a copy.
fn enqueue_in_place(payload: &Bytes, at: usize) -> Option<(Event, usize)> {
    let (mut r, queue, end) = event_head(payload, at, 4, "enq")?;
    let position = r.ulong()?;
    if r.byte()? != 0xb0 {
        return None;
    }
    let len = r.u32()? as usize;
    let start = r.at;
    r.take(len)?;
    if r.at != end {
        return None;
    }
    let event = Event::Enqueue {
        queue: queue.to_owned(),
        position,
        message: payload.slice(start..start + len),
    };
    Some((event, end))
}

/// The `deq` event at `at` if it has the layout [`Encoded::dequeue`] writes
/// (the positions may also be a list8 or list0, and each a ulong, smallulong
/// or ulong0), with the offset just past it; `None` for anything else.
fn dequeue_in_place(payload: &Bytes, at: usize) -> Option<(Event, usize)> {
    let (mut r, queue, end) = event_head(payload, at, 3, "deq")?;
    let count = match r.byte()? {
        0x45 => 0,
        0xc0 => {
            r.byte()?;
            usize::from(r.byte()?)
        }
        0xd0 => {
            r.u32()?;
            r.u32()? as usize
        }
        _ => return None,
    };
    // Each position takes at least one byte: a count beyond what is left
    // is a malformed event, not a reason to allocate.
    if count > r.bytes.len() {
        return None;
    }
    let mut positions = Vec::with_capacity(count);
    for _ in 0..count {
        positions.push(r.ulong()?);
    }
    if r.at != end {
        return None;
    }
    let event = Event::Dequeue {
        queue: queue.to_owned(),
        positions,
    };
    Some((event, end))
}

/// The start every event read in place shares: an amqp-sequence section of
/// a list32 of `items` whose first is the string `name` and second a queue's
/// name; the reader after them, the queue, and the offset past the event.
fn event_head<'a>(
    payload: &'a Bytes,
    at: usize,
    items: u32,
    name: &str,
) -> Option<(Reader<'a>, &'a str, usize)> {
    let mut r = Reader {
        bytes: payload.get(at..)?,
        at,
    };
    if r.take(3)? != SECTION || r.byte()? != 0xd0 {
        return None;
    }
    let size = r.u32()? as usize;
    let end = r.at.checked_add(size)?;
    if r.u32()? != items || r.string()? != name {
        return None;
    }
    let queue = r.string()?;
    if queue.is_empty() {
        return None;
    }
    Some((r, queue, end))
}

/// The bytes [`put_str`] writes for `s`.
fn str_bytes(s: &str) -> usize {
    let constructor = if s.len() < 256 { 2 } else { 5 };
    constructor + s.len()
}

/// A str8 or str32, as the general encoder writes strings.
fn put_str(out: &mut BytesMut, s: &str) {
    match u8::try_from(s.len()) {
        Ok(n) => {
            out.put_u8(0xa1);
            out.put_u8(n);
        }
        Err(_) => {
            out.put_u8(0xb1);
            out.put_u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
        }
    }
    out.put_slice(s.as_bytes());
}

/// Reads bytes front to back, knowing its offset in the whole payload.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        self.at += n;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    /// A ulong, smallulong or ulong0.
    fn ulong(&mut self) -> Option<u64> {
        match self.byte()? {
            0x80 => Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?)),
            0x53 => Some(u64::from(self.byte()?)),
            0x44 => Some(0),
            _ => None,
        }
    }

    /// A str8 or str32.
    fn string(&mut self) -> Option<&'a str> {
        let len = match self.byte()? {
            0xa1 => usize::from(self.byte()?),
            0xb1 => self.u32()? as usize,
            _ => return None,
        };
        std::str::from_utf8(self.take(len)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_round_trips() {
        let events = vec![
            Event::Config(ConfigOp::ReplaceQueue {
                name: "q".into(),
                settings: QueueSettings {
                    max_count: 5,
                    lvq_key: Some("k".into()),
                    replicate: Some("all".into()),
                    ..Default::default()
                },
            }),
            Event::QueueReset {
                name: "q".into(),
                settings: QueueSettings::default(),
            },
            Event::Config(ConfigOp::DeleteQueue {
                name: "q".into(),
                if_unused: false,
            }),
            Event::Config(ConfigOp::DeclareExchange {
                name: "x".into(),
                kind: ExchangeType::Topic,
                durable: true,
                replicate: Some("configuration".into()),
            }),
            Event::Config(ConfigOp::DeleteExchange { name: "x".into() }),
            Event::Config(ConfigOp::Bind {
                exchange: "x".into(),
                queue: "q".into(),
                key: BindingKey::Key("a.#".into()),
            }),
            Event::Config(ConfigOp::Unbind {
                exchange: "x".into(),
                queue: "q".into(),
                key: BindingKey::All,
            }),
            Event::QueueSync {
                name: "q".into(),
                settings: QueueSettings::default(),
                next: (2 << 40) + 1,
                keep: vec![(1, 4), (9, 9), (1 << 40, (1 << 40) + 7)],
            },
            Event::Enqueue {
                queue: "q".into(),
                position: 7,
                message: Bytes::from_static(b"\x00\x53\x77\x40"),
            },
            Event::Dequeue {
                queue: "q".into(),
                positions: vec![1, 2, 9],
            },
            Event::Members {
                epoch: 3,
                members: vec![("id".into(), "h:1".into(), "ready".into())],
            },
            Event::Inventory {
                queues: vec!["a".into(), "b".into()],
                exchanges: vec!["x".into()],
            },
            Event::Sync { id: 42 },
        ];
        for e in events {
            assert_eq!(Event::decode(&e.encode()).expect("decodes"), e);
        }
    }

    #[test]
    fn position_ranges_are_refused_unless_sorted_disjoint_pairs() {
        let ranges = vec![(1, 3), (7, 7)];
        assert_eq!(ranges_from_value(&ranges_value(&ranges)), Some(ranges));
        let ulongs = |v: &[u64]| Value::List(v.iter().map(|&n| Value::Ulong(n)).collect());
        assert_eq!(ranges_from_value(&ulongs(&[1, 2, 3])), None, "odd count");
        assert_eq!(ranges_from_value(&ulongs(&[5, 1])), None, "backwards");
        assert_eq!(ranges_from_value(&ulongs(&[1, 5, 4, 9])), None, "overlap");
        assert_eq!(ranges_from_value(&Value::string("1-3")), None);
        let sync = |keep: Value| {
            Value::Described(
                Box::new(Value::Ulong(AMQP_SEQUENCE)),
                Box::new(Value::List(vec![
                    Value::string("queue-sync"),
                    Value::string("q"),
                    Value::Null,
                    Value::Ulong(10),
                    keep,
                ])),
            )
            .to_bytes()
        };
        let err = Event::decode(&sync(ulongs(&[5, 1]))).expect_err("refused");
        assert!(err.contains("position ranges"), "{err}");
    }

    #[test]
    fn a_delivery_carries_several_events_in_order_and_nothing_else() {
        let first = Event::Config(ConfigOp::DeleteQueue {
            name: "a".into(),
            if_unused: false,
        });
        let second = Event::Enqueue {
            queue: "q".into(),
            position: 3,
            message: Bytes::from_static(b"\x00\x53\x77\x40"),
        };
        let mut batch = first.encode().to_vec();
        batch.extend_from_slice(&second.encode());
        let batch = Bytes::from(batch);
        assert_eq!(
            Event::decode_all(&batch).expect("decodes"),
            vec![first, second]
        );
        assert!(Event::decode(&batch).is_err(), "one event expected");
        assert!(Event::decode_all(&Bytes::new()).is_err(), "no events");
        // An amqp-value section is not an event section.
        let value = Bytes::from_static(b"\x00\x53\x77\x45");
        assert!(Event::decode_all(&value).is_err());
        // A truncated batch is an error, not a shorter batch.
        assert!(Event::decode_all(&batch.slice(..batch.len() - 1)).is_err());
    }

    #[test]
    fn an_enqueue_header_is_the_event_up_to_the_message() {
        let message = Bytes::from(vec![0x5a; 300]);
        let queue = "q".repeat(300); // a str32 name
        let whole = Event::Enqueue {
            queue: queue.clone(),
            position: 1 << 40,
            message: message.clone(),
        };
        let parts = Encoded::enqueue(&queue, 1 << 40, message.clone());
        assert_eq!(parts.tail, message);
        let mut joined = parts.head.to_vec();
        joined.extend_from_slice(&parts.tail);
        assert_eq!(Event::decode(&Bytes::from(joined)).expect("decodes"), whole);
    }

    #[test]
    fn an_enq_in_another_valid_layout_decodes_the_same() {
        let message = Bytes::from_static(b"\x00\x53\x77\xa1\x02hi");
        let expected = Event::Enqueue {
            queue: "q".into(),
            position: 300,
            message: message.clone(),
        };
        // Built as a tree of values: list8, smalluint forms and vbin8 where the
        // encoder picks them, not the layout read in place.
        let tree = Value::Described(
            Box::new(Value::Ulong(AMQP_SEQUENCE)),
            Box::new(Value::List(vec![
                Value::string("enq"),
                Value::string("q"),
                Value::Ulong(300),
                Value::Binary(message),
            ])),
        )
        .to_bytes();
        assert_ne!(tree, expected.encode(), "a different layout");
        assert_eq!(Event::decode(&tree).expect("decodes"), expected);
        assert_eq!(
            Event::decode(&expected.encode()).expect("decodes"),
            expected
        );
    }

    #[test]
    fn a_cut_enq_is_an_error_whatever_its_length() {
        let whole = Event::Enqueue {
            queue: "orders".into(),
            position: 1 << 40,
            message: Bytes::from_static(b"\x00\x53\x77\xa1\x05hello"),
        }
        .encode();
        for len in 0..whole.len() {
            let cut = whole.slice(..len);
            assert!(
                Event::decode_all(&cut).is_err(),
                "{len} of {} bytes",
                whole.len()
            );
        }
    }

    #[test]
    fn dequeues_read_in_place_match_the_general_decoder_either_way() {
        let positions = vec![0, 7, 255, 256, u64::MAX];
        let long_name = "q".repeat(300);
        for queue in ["orders", long_name.as_str()] {
            // What Encoded::dequeue writes, read by the fast path ...
            let fast = Encoded::dequeue(queue, &positions).head;
            let want = Event::Dequeue {
                queue: queue.to_owned(),
                positions: positions.clone(),
            };
            assert_eq!(
                dequeue_in_place(&fast, 0).map(|(e, _)| e),
                Some(want.clone())
            );
            // ... and by the general one.
            let mut d = Decoder::new(fast.clone());
            let items = match d.value().expect("decodes") {
                Value::Described(_, body) => match *body {
                    Value::List(items) => items,
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            };
            assert_eq!(Event::from_items(items).expect("an event"), want);
            // What the general encoder writes (list8, smallulongs, ulong0)
            // is read in place too.
            let mut general = BytesMut::new();
            general.put_slice(&SECTION);
            let mut list = BytesMut::new();
            Value::List(vec![
                Value::string("deq"),
                Value::string(queue),
                Value::List(positions.iter().map(|p| Value::Ulong(*p)).collect()),
            ])
            .encode(&mut list);
            // Always as a list32 outside: the in-place reader wants that.
            if list[0] == 0xd0 {
                general.put_slice(&list);
                let general = general.freeze();
                assert_eq!(
                    dequeue_in_place(&general, 0).map(|(e, _)| e),
                    Some(want.clone())
                );
            }
            assert_eq!(Event::decode_all(&fast).expect("decodes"), vec![want]);
        }
        // A count larger than the bytes left is refused, not allocated.
        let mut bad = Encoded::dequeue("q", &[1]).head.to_vec();
        let count_at = bad.len() - 9 - 4;
        bad[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(dequeue_in_place(&Bytes::from(bad), 0).is_none());
    }
}
