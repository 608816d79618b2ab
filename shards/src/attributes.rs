//! Reading and writing attribute maps: management request bodies, a link's
//! dynamic-node-properties, and queue settings on the replication stream all
//! spell a queue's settings the same way, so one reader and one writer serve
//! them. Errors name the attribute and what it allows.

use crate::amqp::codec::Value;
use crate::queue::{LimitPolicy, QueueSettings};

/// A non-negative integer attribute, given as a number or a decimal string.
pub fn u64_attr(body: &Value, key: &str) -> Result<Option<u64>, String> {
    match body.map_get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| format!("{key}: '{s}' is not a non-negative whole number")),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("{key}: {v:?} is not a non-negative whole number")),
    }
}

/// A boolean attribute: a boolean, or true/yes/1, false/no/0 as a string.
pub fn bool_attr(body: &Value, key: &str) -> Result<Option<bool>, String> {
    match body.map_get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Ok(Some(true)),
            "false" | "no" | "0" => Ok(Some(false)),
            _ => Err(format!("{key}: '{s}' is not a boolean")),
        },
        Some(v) => Err(format!("{key}: {v:?} is not a boolean")),
    }
}

/// A string (or symbol) attribute.
pub fn str_attr<'a>(body: &'a Value, key: &str) -> Result<Option<&'a str>, String> {
    match body.map_get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| format!("{key}: {v:?} is not a string")),
    }
}

/// A replication level, `qpid.replicate` (qpidd's name) or `replicate`.
pub fn replicate_attr(body: &Value) -> Result<Option<String>, String> {
    for key in ["qpid.replicate", "replicate"] {
        match str_attr(body, key)? {
            None => continue,
            Some(r @ ("none" | "configuration" | "all")) => return Ok(Some(r.to_owned())),
            Some(other) => {
                return Err(format!(
                    "{key}: '{other}' is not one of none, configuration, all"
                ))
            }
        }
    }
    Ok(None)
}

/// `replica-of`: a broker URL (the remote a replica queue copies), or empty
/// for none (an ordinary queue again).
fn replica_of_attr(remote: &str) -> Result<Option<String>, String> {
    if remote.trim().is_empty() {
        return Ok(None);
    }
    let url: crate::url::BrokerUrl = remote
        .parse()
        .map_err(|e| format!("replica-of: not a broker URL: {e}"))?;
    Ok(Some(url.to_string()))
}

impl QueueSettings {
    /// These settings with what `attrs` sets: `max-queue-size`,
    /// `max-queue-count`, `limit-policy`, `durable`, `auto-delete`, `lvq-key`,
    /// `qpid.replicate` (or `replicate`); attributes left out keep their value.
    pub fn with_attributes(&self, attrs: &Value) -> Result<QueueSettings, String> {
        let mut s = self.clone();
        if let Some(n) = u64_attr(attrs, "max-queue-size")? {
            s.max_size = n;
        }
        if let Some(n) = u64_attr(attrs, "max-queue-count")? {
            s.max_count = n;
        }
        if let Some(p) = str_attr(attrs, "limit-policy")? {
            s.policy = LimitPolicy::parse(p)
                .ok_or_else(|| format!("limit-policy: '{p}' is not one of flow, reject, ring"))?;
        }
        if let Some(d) = bool_attr(attrs, "durable")? {
            s.durable = d;
        }
        if let Some(a) = bool_attr(attrs, "auto-delete")? {
            s.auto_delete = a;
        }
        if let Some(k) = str_attr(attrs, "lvq-key")? {
            if k.is_empty() {
                return Err("lvq-key: must not be empty".into());
            }
            s.lvq_key = Some(k.to_owned());
        }
        if let Some(r) = replicate_attr(attrs)? {
            s.replicate = Some(r);
        }
        if let Some(remote) = str_attr(attrs, "replica-of")? {
            s.replica_of = replica_of_attr(remote)?;
        }
        Ok(s)
    }

    /// The settings as an attribute map that [`Self::with_attributes`] reads
    /// back (the replication stream carries it).
    pub fn attributes(&self) -> Value {
        let s = Value::string;
        let mut m = vec![
            (s("max-queue-size"), Value::Ulong(self.max_size)),
            (s("max-queue-count"), Value::Ulong(self.max_count)),
            (s("limit-policy"), s(self.policy.as_str())),
            (s("durable"), Value::Bool(self.durable)),
        ];
        if self.auto_delete {
            m.push((s("auto-delete"), Value::Bool(true)));
        }
        if let Some(k) = &self.lvq_key {
            m.push((s("lvq-key"), s(k)));
        }
        if let Some(r) = &self.replicate {
            m.push((s("replicate"), s(r)));
        }
        if let Some(remote) = &self.replica_of {
            m.push((s("replica-of"), s(remote)));
        }
        Value::Map(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_survive_a_round_trip_through_attributes() {
        let settings = QueueSettings {
            max_size: 10,
            max_count: 3,
            policy: LimitPolicy::Ring,
            durable: true,
            auto_delete: true,
            replicate: Some("all".into()),
            lvq_key: Some("k".into()),
            replica_of: Some("guest/pw@h1:5672,h2:5673".into()),
        };
        let back = QueueSettings::default().with_attributes(&settings.attributes());
        assert_eq!(back, Ok(settings));
    }

    #[test]
    fn attributes_left_out_keep_their_value_and_bad_ones_are_named() {
        let base = QueueSettings {
            max_size: 7,
            ..Default::default()
        };
        let attrs = Value::Map(vec![
            (Value::string("max-queue-count"), Value::string("5")),
            (Value::symbol("qpid.replicate"), Value::string("none")),
        ]);
        let s = base.with_attributes(&attrs).expect("valid");
        assert_eq!((s.max_size, s.max_count), (7, 5));
        assert_eq!(s.replicate.as_deref(), Some("none"));
        let bad = |k: &str, v: Value| {
            base.with_attributes(&Value::Map(vec![(Value::string(k), v)]))
                .expect_err("invalid")
        };
        assert_eq!(
            bad("limit-policy", Value::string("bogus")),
            "limit-policy: 'bogus' is not one of flow, reject, ring"
        );
        assert_eq!(
            bad("qpid.replicate", Value::string("x")),
            "qpid.replicate: 'x' is not one of none, configuration, all"
        );
        assert_eq!(
            bad("max-queue-size", Value::string("-1")),
            "max-queue-size: '-1' is not a non-negative whole number"
        );
        assert_eq!(
            bad("lvq-key", Value::string("")),
            "lvq-key: must not be empty"
        );
        assert!(bad("replica-of", Value::string("h:99999"))
            .starts_with("replica-of: not a broker URL: port '99999'"));
        let cleared = QueueSettings {
            replica_of: Some("h:1".into()),
            ..Default::default()
        }
        .with_attributes(&Value::Map(vec![(
            Value::string("replica-of"),
            Value::string(""),
        )]))
        .expect("valid");
        assert_eq!(cleared.replica_of, None);
    }
}
