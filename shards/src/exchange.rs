//! Exchanges and their bindings: which queues a message sent to an exchange goes
//! to. Every shard holds the same bindings (configuration changes are broadcast),
//! so routing is decided on the shard that received the message.

use std::sync::Arc;

use crate::amqp::codec::Value;

/// The routing rule of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeType {
    Direct,
    Topic,
    Fanout,
    Headers,
}

impl ExchangeType {
    pub fn parse(s: &str) -> Option<ExchangeType> {
        match s {
            "direct" => Some(ExchangeType::Direct),
            "topic" => Some(ExchangeType::Topic),
            "fanout" => Some(ExchangeType::Fanout),
            "headers" => Some(ExchangeType::Headers),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Topic => "topic",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Headers => "headers",
        }
    }
}

/// The exchanges every broker has; they are never replicated.
pub const BUILT_IN: [(&str, ExchangeType); 4] = [
    ("amq.direct", ExchangeType::Direct),
    ("amq.topic", ExchangeType::Topic),
    ("amq.fanout", ExchangeType::Fanout),
    ("amq.match", ExchangeType::Headers),
];

/// What a binding matches on.
#[derive(Debug, Clone, PartialEq)]
pub enum BindingKey {
    /// Matches every message (a subscription without a filter; fanout bindings).
    All,
    /// Exact subject (direct) or topic pattern (topic).
    Key(String),
    /// Headers match: `all` or `any` of these application properties.
    Headers {
        match_all: bool,
        values: Vec<(String, Value)>,
    },
}

impl BindingKey {
    /// The key as a value (replication events, the store's configuration
    /// file): null for all, a string key, or a map with `x-match`.
    pub fn to_value(&self) -> Value {
        match self {
            BindingKey::All => Value::Null,
            BindingKey::Key(k) => Value::string(k),
            BindingKey::Headers { match_all, values } => {
                let x_match = if *match_all { "all" } else { "any" };
                let mut m = vec![(Value::string("x-match"), Value::string(x_match))];
                m.extend(values.iter().map(|(k, v)| (Value::string(k), v.clone())));
                Value::Map(m)
            }
        }
    }

    /// The key [`BindingKey::to_value`] wrote.
    pub fn from_value(v: &Value) -> BindingKey {
        match v {
            Value::Null => BindingKey::All,
            Value::Map(_) => headers_key(v).unwrap_or(BindingKey::All),
            other => BindingKey::Key(other.as_str().unwrap_or_default().to_owned()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub queue: Arc<str>,
    pub key: BindingKey,
}

#[derive(Debug, Clone)]
pub struct Exchange {
    pub name: Arc<str>,
    pub kind: ExchangeType,
    pub bindings: Vec<Binding>,
    pub durable: bool,
    /// `qpid.replicate`, stored for the HA issue.
    pub replicate: Option<String>,
}

/// What routing needs to know of a message; application properties are decoded
/// only for headers exchanges.
pub struct RoutingInfo<'a> {
    pub subject: Option<&'a str>,
    pub properties: Option<&'a Value>,
}

impl Exchange {
    pub fn new(name: &str, kind: ExchangeType) -> Exchange {
        Exchange {
            name: name.into(),
            kind,
            bindings: Vec::new(),
            durable: false,
            replicate: None,
        }
    }

    /// Adds a binding unless an identical one exists; returns whether it was added.
    pub fn bind(&mut self, binding: Binding) -> bool {
        if self.bindings.contains(&binding) {
            return false;
        }
        self.bindings.push(binding);
        true
    }

    pub fn unbind(&mut self, binding: &Binding) -> bool {
        let before = self.bindings.len();
        self.bindings.retain(|b| b != binding);
        before != self.bindings.len()
    }

    pub fn unbind_queue(&mut self, queue: &str) {
        self.bindings.retain(|b| &*b.queue != queue);
    }

    /// The queues a message goes to (each at most once).
    pub fn route(&self, msg: &RoutingInfo<'_>, out: &mut Vec<Arc<str>>) {
        for b in &self.bindings {
            if self.matches(&b.key, msg) && !out.contains(&b.queue) {
                out.push(b.queue.clone());
            }
        }
    }

    fn matches(&self, key: &BindingKey, msg: &RoutingInfo<'_>) -> bool {
        match (key, self.kind) {
            (BindingKey::All, _) | (_, ExchangeType::Fanout) => true,
            (BindingKey::Key(k), ExchangeType::Direct) => msg.subject == Some(k.as_str()),
            (BindingKey::Key(p), ExchangeType::Topic) => {
                topic_matches(p, msg.subject.unwrap_or(""))
            }
            (BindingKey::Headers { match_all, values }, _) => {
                headers_match(*match_all, values, msg.properties)
            }
            (BindingKey::Key(k), ExchangeType::Headers) => msg.subject == Some(k.as_str()),
        }
    }
}

/// Topic pattern match: words separated by '.', `*` is exactly one word, `#` is
/// zero or more words.
pub fn topic_matches(pattern: &str, subject: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let s: Vec<&str> = if subject.is_empty() {
        Vec::new()
    } else {
        subject.split('.').collect()
    };
    match_words(&p, &s)
}

fn match_words(p: &[&str], s: &[&str]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((&"#", rest)) => {
            // '#' swallows 0..=len words; collapse repeated '#'.
            (0..=s.len()).any(|i| match_words(rest, &s[i..]))
        }
        Some((&"*", rest)) => !s.is_empty() && match_words(rest, &s[1..]),
        Some((w, rest)) => s.first() == Some(w) && match_words(rest, &s[1..]),
    }
}

/// Headers exchange semantics: each binding value must equal the property (a null
/// binding value only requires the property to be present).
fn headers_match(match_all: bool, values: &[(String, Value)], props: Option<&Value>) -> bool {
    let hit = |(k, v): &(String, Value)| match props.and_then(|p| p.map_get(k)) {
        None => false,
        Some(actual) => {
            v.is_null() || actual == v || (v.as_str().is_some() && actual.as_str() == v.as_str())
        }
    };
    if values.is_empty() {
        return true;
    }
    if match_all {
        values.iter().all(hit)
    } else {
        values.iter().any(hit)
    }
}

/// Builds a binding key from a headers-binding filter map (`x-match` + values).
pub fn headers_key(map: &Value) -> Option<BindingKey> {
    let Value::Map(entries) = map else {
        return None;
    };
    let mut match_all = true;
    let mut values = Vec::new();
    for (k, v) in entries {
        let key = k.as_str()?;
        if key == "x-match" {
            match_all = v.as_str() != Some("any");
        } else if !key.starts_with("x-") {
            values.push((key.to_owned(), v.clone()));
        }
    }
    Some(BindingKey::Headers { match_all, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_wildcards() {
        assert!(topic_matches("news.#", "news"));
        assert!(topic_matches("news.#", "news.sport.uk"));
        assert!(topic_matches("news.*", "news.sport"));
        assert!(!topic_matches("news.*", "news.sport.uk"));
        assert!(!topic_matches("news.*", "news"));
        assert!(topic_matches("#.uk", "news.sport.uk"));
        assert!(topic_matches("#", ""));
        assert!(topic_matches("*.*.uk", "a.b.uk"));
        assert!(!topic_matches("weather", "news"));
        assert!(topic_matches("a.#.#.b", "a.b"));
    }

    #[test]
    fn exchange_routes_by_kind() {
        let mut topic = Exchange::new("amq.topic", ExchangeType::Topic);
        topic.bind(Binding {
            queue: "q1".into(),
            key: BindingKey::Key("news.#".into()),
        });
        topic.bind(Binding {
            queue: "q2".into(),
            key: BindingKey::Key("*.uk".into()),
        });
        let mut out = Vec::new();
        topic.route(
            &RoutingInfo {
                subject: Some("news.uk"),
                properties: None,
            },
            &mut out,
        );
        assert_eq!(out.len(), 2);
        out.clear();
        topic.route(
            &RoutingInfo {
                subject: Some("sport.fr"),
                properties: None,
            },
            &mut out,
        );
        assert!(out.is_empty());
    }

    #[test]
    fn headers_all_and_any() {
        let props = Value::Map(vec![
            (Value::string("colour"), Value::string("red")),
            (Value::string("size"), Value::Int(3)),
        ]);
        let all = headers_key(&Value::Map(vec![
            (Value::string("x-match"), Value::string("all")),
            (Value::string("colour"), Value::string("red")),
            (Value::string("size"), Value::Int(3)),
        ]))
        .expect("key");
        let any = headers_key(&Value::Map(vec![
            (Value::string("x-match"), Value::string("any")),
            (Value::string("colour"), Value::string("blue")),
            (Value::string("size"), Value::Int(3)),
        ]))
        .expect("key");
        let mut ex = Exchange::new("amq.match", ExchangeType::Headers);
        ex.bind(Binding {
            queue: "a".into(),
            key: all,
        });
        ex.bind(Binding {
            queue: "b".into(),
            key: any,
        });
        let mut out = Vec::new();
        ex.route(
            &RoutingInfo {
                subject: None,
                properties: Some(&props),
            },
            &mut out,
        );
        assert_eq!(out.len(), 2);
    }
}
