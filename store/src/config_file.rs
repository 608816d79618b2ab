//! The durable configuration: durable queues (with their settings), durable
//! exchanges and the bindings between them, in one small file that is
//! replaced whole (write beside, sync, rename) after every change.
//!
//! ```text
//! magic "TANDEMC\0" | format u32 LE | crc32c u32 LE of the body | body
//! ```
//!
//! The body is one AMQP list of entries, each a list: `["queue", name,
//! attributes]`, `["exchange", name, type, replicate]`, `["bind", exchange,
//! queue, key]`,
//! in the order they must be applied.

use bytes::{BufMut, Bytes, BytesMut};
use tandem_shards::amqp::codec::{Decoder, Value};
use tandem_shards::broker::{Catalogue, ConfigOp};
use tandem_shards::exchange::{BindingKey, ExchangeType, BUILT_IN};
use tandem_shards::queue::QueueSettings;

use crate::record::FORMAT;

const MAGIC: &[u8; 8] = b"TANDEMC\0";

/// Why the configuration file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigFileError {
    #[error("not a Tandem store configuration file (bad magic)")]
    Magic,
    #[error("store configuration format version {0}, this build reads version {FORMAT} only")]
    Version(u32),
    #[error("store configuration is damaged (checksum mismatch)")]
    Checksum,
    #[error("store configuration is damaged: {0}")]
    Body(String),
}

/// What the catalogue holds that must survive a restart, as the changes that
/// rebuild it.
pub fn durable_config(catalogue: &Catalogue) -> Vec<ConfigOp> {
    let mut queues: Vec<_> = catalogue
        .queues
        .iter()
        .filter(|(_, e)| e.settings.durable && !e.settings.auto_delete)
        .collect();
    queues.sort_by(|a, b| a.0.cmp(b.0));
    let mut exchanges: Vec<_> = catalogue
        .exchanges
        .values()
        .filter(|x| x.durable && !BUILT_IN.iter().any(|(b, _)| *b == &*x.name))
        .collect();
    exchanges.sort_by(|a, b| a.name.cmp(&b.name));
    let mut ops: Vec<ConfigOp> = queues
        .iter()
        .map(|(name, e)| ConfigOp::ReplaceQueue {
            name: name.to_string(),
            settings: e.settings.clone(),
        })
        .collect();
    ops.extend(exchanges.iter().map(|x| ConfigOp::DeclareExchange {
        name: x.name.to_string(),
        kind: x.kind,
        durable: true,
        replicate: x.replicate.clone(),
    }));
    // Bindings of durable exchanges (and the built-in ones) to durable queues.
    let mut all: Vec<_> = catalogue.exchanges.values().collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    for x in all {
        let built_in = BUILT_IN.iter().any(|(b, _)| *b == &*x.name);
        if !(x.durable || built_in) {
            continue;
        }
        for b in &x.bindings {
            let durable_queue = catalogue
                .queues
                .get(&b.queue)
                .is_some_and(|e| e.settings.durable && !e.settings.auto_delete);
            if durable_queue {
                ops.push(ConfigOp::Bind {
                    exchange: x.name.to_string(),
                    queue: b.queue.to_string(),
                    key: b.key.clone(),
                });
            }
        }
    }
    ops
}

/// The file holding `ops`.
pub fn encode(ops: &[ConfigOp]) -> Bytes {
    let s = Value::string;
    let entries: Vec<Value> = ops
        .iter()
        .filter_map(|op| match op {
            ConfigOp::ReplaceQueue { name, settings } => {
                Some(vec![s("queue"), s(name), settings.attributes()])
            }
            ConfigOp::DeclareExchange {
                name,
                kind,
                replicate,
                ..
            } => {
                let replicate = replicate.as_deref().map_or(Value::Null, s);
                Some(vec![s("exchange"), s(name), s(kind.as_str()), replicate])
            }
            ConfigOp::Bind {
                exchange,
                queue,
                key,
            } => Some(vec![s("bind"), s(exchange), s(queue), key.to_value()]),
            _ => None,
        })
        .map(Value::List)
        .collect();
    let body = Value::List(entries).to_bytes();
    let mut out = BytesMut::with_capacity(16 + body.len());
    out.put_slice(MAGIC);
    out.put_u32_le(FORMAT);
    out.put_u32_le(crc32c::crc32c(&body));
    out.put_slice(&body);
    out.freeze()
}

/// The changes a configuration file holds, in order.
pub fn decode(file: &Bytes) -> Result<Vec<ConfigOp>, ConfigFileError> {
    if file.len() < 16 || &file[..8] != MAGIC {
        return Err(ConfigFileError::Magic);
    }
    let word = |at: usize| u32::from_le_bytes([file[at], file[at + 1], file[at + 2], file[at + 3]]);
    if word(8) != FORMAT {
        return Err(ConfigFileError::Version(word(8)));
    }
    let body = file.slice(16..);
    if crc32c::crc32c(&body) != word(12) {
        return Err(ConfigFileError::Checksum);
    }
    let bad = |why: &str| ConfigFileError::Body(why.to_owned());
    let Value::List(entries) = Decoder::new(body)
        .value()
        .map_err(|e| ConfigFileError::Body(e.to_string()))?
    else {
        return Err(bad("the body is not a list"));
    };
    let mut ops = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::List(items) = entry else {
            return Err(bad("an entry is not a list"));
        };
        let text = |i: usize| {
            items
                .get(i)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| bad("an entry lacks a name"))
        };
        ops.push(match text(0)?.as_str() {
            "queue" => ConfigOp::ReplaceQueue {
                name: text(1)?,
                settings: QueueSettings::default()
                    .with_attributes(items.get(2).unwrap_or(&Value::Null))
                    .map_err(|e| ConfigFileError::Body(format!("queue settings: {e}")))?,
            },
            "exchange" => ConfigOp::DeclareExchange {
                name: text(1)?,
                kind: ExchangeType::parse(&text(2)?).ok_or_else(|| bad("unknown exchange type"))?,
                durable: true,
                replicate: items.get(3).and_then(Value::as_str).map(str::to_owned),
            },
            "bind" => ConfigOp::Bind {
                exchange: text(1)?,
                queue: text(2)?,
                key: BindingKey::from_value(items.get(3).unwrap_or(&Value::Null)),
            },
            other => return Err(ConfigFileError::Body(format!("unknown entry '{other}'"))),
        });
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops() -> Vec<ConfigOp> {
        vec![
            ConfigOp::ReplaceQueue {
                name: "orders".into(),
                settings: QueueSettings {
                    durable: true,
                    max_count: 10,
                    ..Default::default()
                },
            },
            ConfigOp::DeclareExchange {
                name: "events".into(),
                kind: ExchangeType::Topic,
                durable: true,
                replicate: Some("all".into()),
            },
            ConfigOp::Bind {
                exchange: "events".into(),
                queue: "orders".into(),
                key: BindingKey::Key("order.#".into()),
            },
        ]
    }

    #[test]
    fn the_configuration_round_trips() {
        assert_eq!(decode(&encode(&ops())), Ok(ops()));
    }

    #[test]
    fn a_damaged_or_foreign_file_says_so() {
        let good = encode(&ops());
        let mut flipped = good.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(decode(&flipped.into()), Err(ConfigFileError::Checksum));
        let mut newer = good.to_vec();
        newer[8] = 2;
        assert_eq!(decode(&newer.into()), Err(ConfigFileError::Version(2)));
        assert_eq!(
            decode(&Bytes::from_static(b"{\"json\": true}")),
            Err(ConfigFileError::Magic)
        );
        for cut in 0..good.len() {
            assert!(decode(&good.slice(..cut)).is_err(), "cut at {cut}");
        }
    }
}
