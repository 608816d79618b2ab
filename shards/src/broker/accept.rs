//! How a shard's connections begin: the engine of an accepted client
//! connection (SASL mechanisms, open properties, limits), and the engine of a
//! backup's own replication connection to a primary. The runtime hands over a
//! socket's peer address and moves bytes; it builds no engine itself, so a
//! simulation starts connections exactly as the broker does.

use crate::amqp::codec::Value;
use crate::amqp::connection::{Connection, ConnectionConfig, Sasl};

use super::{BrokerSettings, Shard};

impl Shard {
    /// A client connected from `peer`: starts its server engine; returns the
    /// connection id.
    pub fn accept_connection(&mut self, peer: String) -> u64 {
        let engine = Connection::server(server_config(&self.settings, self.id), self.now);
        self.add_connection(engine, peer)
    }

    /// Backup: starts the replication connection to `brokers[index]` at
    /// `address` (the runtime has connected the socket); `None` outside a
    /// cluster.
    pub fn open_replica_connection(&mut self, index: usize, address: String) -> Option<u64> {
        let link = self.settings.ha_link.clone()?;
        let backup_info = self
            .ha_identity()
            .map(|w| {
                Value::Map(vec![
                    (Value::symbol("broker-id"), Value::String(w.broker_id)),
                    (Value::symbol("address"), Value::String(w.address)),
                    (Value::symbol("epoch"), Value::Ulong(w.epoch)),
                ])
            })
            .unwrap_or(Value::Bool(true));
        let credentials = link
            .username
            .clone()
            .map(|u| (u, link.password.clone().unwrap_or_default()));
        let cfg = ConnectionConfig {
            container_id: self.settings.container_id.clone(),
            max_frame_size: self.settings.max_frame_size,
            channel_max: 16,
            // The primary must be heard at least every heartbeat; twice that is silence.
            idle_timeout: Some(link.heartbeat * 2),
            properties: Some(Value::Map(vec![(
                Value::symbol("qpid.ha-backup"),
                backup_info,
            )])),
            max_message_size: self.settings.max_message_size,
            hostname: Some(address.clone()),
            sasl: Sasl::Client {
                credentials,
                skip: false,
            },
        };
        let mut engine = Connection::client(cfg, self.now);
        engine.set_heartbeat(link.heartbeat);
        Some(self.add_replica_connection(engine, index, address))
    }
}

/// The engine settings of an accepted connection on shard `shard`.
fn server_config(settings: &BrokerSettings, shard: usize) -> ConnectionConfig {
    let users = settings.users.clone();
    let auth = settings.auth;
    let authenticator = Box::new(move |mechanism: &str, response: &[u8]| -> Option<String> {
        match mechanism {
            "ANONYMOUS" if !auth => Some("anonymous".into()),
            "PLAIN" => {
                // authzid NUL authcid NUL password
                let mut parts = response.split(|b| *b == 0);
                let _authzid = parts.next()?;
                let user = std::str::from_utf8(parts.next()?).ok()?;
                let pass = std::str::from_utf8(parts.next()?).ok()?;
                if !auth || users.get(user).is_some_and(|p| p == pass) {
                    Some(user.to_owned())
                } else {
                    None
                }
            }
            _ => None,
        }
    });
    let mechanisms = if auth {
        vec!["PLAIN".to_owned()]
    } else {
        vec!["ANONYMOUS".to_owned(), "PLAIN".to_owned()]
    };
    ConnectionConfig {
        container_id: settings.container_id.clone(),
        max_frame_size: settings.max_frame_size,
        channel_max: 255,
        idle_timeout: settings.idle_timeout,
        properties: Some(Value::Map(
            [
                (Value::symbol("product"), Value::string("tandem")),
                (
                    Value::symbol("version"),
                    Value::string(env!("CARGO_PKG_VERSION")),
                ),
                (Value::symbol("tandem.shard"), Value::Uint(shard as u32)),
            ]
            .into_iter()
            .chain(
                settings
                    .open_properties
                    .iter()
                    .map(|(k, v)| (Value::symbol(k), v.clone())),
            )
            .collect(),
        )),
        max_message_size: settings.max_message_size,
        hostname: None,
        sasl: Sasl::Server {
            mechanisms,
            authenticator,
            require: auth,
        },
    }
}
