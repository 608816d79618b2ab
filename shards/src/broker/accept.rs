//! How an accepted connection begins: its server engine (SASL mechanisms,
//! open properties, limits). The runtime hands over a socket's peer address
//! and moves bytes; it builds no engine itself, so a simulation starts
//! connections exactly as the broker does. (Connections the extension opens
//! get their engine from it: [`super::ext`].)

use std::time::Instant;

use crate::amqp::codec::Value;
use crate::amqp::connection::{Connection, ConnectionConfig, Sasl};
use crate::amqp::performative::{condition, ErrorCondition};

use super::{BrokerSettings, Shard};

impl Shard {
    /// A client connected from `peer`: starts its server engine; returns the
    /// connection id.
    pub fn accept_connection(&mut self, peer: String) -> u64 {
        self.accept_connection_on(peer, false)
    }

    /// A client connected from `peer`, over TLS if `encrypted`.
    pub fn accept_connection_on(&mut self, peer: String, encrypted: bool) -> u64 {
        let engine = Connection::server(server_config(&self.settings, self.id), self.now);
        let id = self.add_connection(engine, peer);
        if let Some(c) = self.conns.get_mut(&id) {
            c.encrypted = encrypted;
        }
        self.evict_handshaking();
        id
    }

    /// The TLS handshake of `id` is done; `certificate`: the client's
    /// verified certificate (DER), if it gave one.
    pub fn conn_tls_established(&mut self, id: u64, certificate: Option<Vec<u8>>) {
        let realm = self.settings.realm.clone();
        let identity = certificate
            .as_deref()
            .and_then(crate::tls::subject_common_name)
            .map(|cn| format!("{cn}@{realm}"));
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        match identity {
            Some(identity) => {
                tracing::debug!(conn = id, peer = %c.peer, identity = %crate::shown::shown(&identity), "TLS client certificate");
                c.engine.set_external_identity(identity);
            }
            None if certificate.is_some() => {
                tracing::info!(conn = id, peer = %c.peer, "TLS client certificate without a common name: no EXTERNAL login");
            }
            None => tracing::debug!(conn = id, peer = %c.peer, "TLS established"),
        }
    }

    /// The peer address of connection `id`.
    pub fn conn_peer(&self, id: u64) -> Option<String> {
        self.conns.get(&id).map(|c| c.peer.clone())
    }

    /// Beyond this shard's share of `max-handshaking`, the connections that
    /// have been in their handshake longest are closed, so silent sockets can
    /// never keep a new client out.
    fn evict_handshaking(&mut self) {
        let share = self
            .settings
            .max_handshaking
            .div_ceil(self.settings.shards.max(1));
        let mut waiting: Vec<(Instant, u64)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.handshaking())
            .map(|(id, c)| (c.since, *id))
            .collect();
        if waiting.len() <= share.max(1) {
            return;
        }
        waiting.sort_unstable();
        let evict = waiting.len() - share.max(1);
        for &(_, id) in &waiting[..evict] {
            let why = format!(
                "closed: {} connections were still in their handshake (max-handshaking), this one the longest",
                waiting.len()
            );
            self.end_handshake(id, &why);
        }
    }

    /// Closes a connection that did not finish its handshake.
    pub(super) fn end_handshake(&mut self, id: u64, why: &str) {
        if let Some(c) = self.conns.get_mut(&id) {
            tracing::info!(conn = id, peer = %c.peer, "{why}");
            c.engine
                .abort(ErrorCondition::new(condition::CONNECTION_FORCED, why));
        }
        self.mark_dirty(id);
    }
}

/// The engine settings of an accepted connection on shard `shard`.
fn server_config(settings: &BrokerSettings, shard: usize) -> ConnectionConfig {
    let authenticator = Box::new(crate::users::Logins::new(
        settings.users.current(),
        settings.auth,
    ));
    let mechanisms = if settings.auth {
        vec![crate::users::SCRAM_SHA_256.to_owned(), "PLAIN".to_owned()]
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
            require: settings.auth,
        },
    }
}
