//! How an accepted connection begins: its server engine (SASL mechanisms,
//! open properties, limits). The runtime hands over a socket's peer address
//! and moves bytes; it builds no engine itself, so a simulation starts
//! connections exactly as the broker does. (Connections the extension opens
//! get their engine from it: [`super::ext`].)

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
