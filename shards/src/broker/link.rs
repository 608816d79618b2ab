//! The connection side of a shard: what each link of a client connection means
//! (publisher to a queue or exchange, consumer or browser of a queue), how
//! publishes are routed and settled once stored, and how deliveries from queue
//! owners reach the wire within the client's credit.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::conn::{not_found, Dest, LinkRole, Waiting};
use super::{consumer_ref, ConfigDone, ConfigOp, Shard, ShardMsg};
use crate::access::Access;
use crate::amqp::codec::Value;
use crate::amqp::connection::{Event, LinkKey};
use crate::amqp::performative::{condition, Attach, ErrorCondition, Role, Source, Target};
use crate::exchange::{headers_key, BindingKey};
use crate::queue::QueueSettings;

/// Bounds of the buffer a connection's next output batch starts in.
const OUTPUT_MIN: usize = 4 * 1024;
const OUTPUT_MAX: usize = 256 * 1024;

/// Filter descriptors of the legacy AMQP 0-10 binding filters (symbol and code).
const DIRECT_FILTER: (&str, u64) = (
    "apache.org:legacy-amqp-direct-binding:string",
    0x0000_468c_0000_0000,
);
const TOPIC_FILTER: (&str, u64) = (
    "apache.org:legacy-amqp-topic-binding:string",
    0x0000_468c_0000_0001,
);
const HEADERS_FILTER: (&str, u64) = (
    "apache.org:legacy-amqp-headers-binding:map",
    0x0000_468c_0000_0002,
);

/// Why a send (or consume) on a queue replica is refused.
pub(super) fn replica_refusal(queue: &str, remote: &str) -> ErrorCondition {
    ErrorCondition::new(
        condition::NOT_ALLOWED,
        format!(
            "queue '{queue}' is a replica of {}: it takes messages only from there and may only be browsed here (tandem-ha stop-replicate makes it an ordinary queue)",
            crate::url::redacted_text(remote)
        ),
    )
}

/// A receiving link that browses (`distribution-mode = copy`).
fn is_browser(attach: &Attach) -> bool {
    attach
        .source
        .as_ref()
        .is_some_and(|s| s.distribution_mode.as_deref() == Some("copy"))
}

impl Shard {
    // -----------------------------------------------------------------------
    // Socket events (called by the runtime)

    /// Bytes from a client's socket.
    pub fn conn_input(&mut self, id: u64, buf: &mut BytesMut, now: Instant) {
        self.set_now(now);
        let extension_listens = match self.conns.get_mut(&id) {
            Some(c) => {
                let before = buf.len();
                c.engine.input(buf, now);
                c.bytes_in += (before - buf.len()) as u64;
                c.owned || !c.claimed.is_empty()
            }
            None => false,
        };
        if extension_listens {
            self.with_ext(move |ext, shard| ext.heard(shard, id, now));
        }
        self.conn_events(id);
    }

    /// The client's socket reached end of file or failed.
    pub fn conn_eof(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.engine.input_eof();
        }
        self.conn_events(id);
    }

    /// Timer: heartbeats and idle timeout; returns the next deadline.
    pub fn conn_tick(&mut self, id: u64, now: Instant) -> Option<Instant> {
        self.set_now(now);
        let timeout = self.settings.handshake_timeout;
        let handshake_ends = self
            .conns
            .get(&id)
            .filter(|c| c.handshaking())
            .map(|c| c.since + timeout);
        if handshake_ends.is_some_and(|end| now >= end) {
            let why = format!("closed: no AMQP open within the handshake-timeout ({timeout:?})");
            self.end_handshake(id, &why);
        }
        let next = self.conns.get_mut(&id).and_then(|c| c.engine.tick(now));
        self.conn_events(id);
        match (next, handshake_ends.filter(|end| now < *end)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes the bytes to write to a client's socket.
    pub fn conn_output(&mut self, id: u64) -> Option<Bytes> {
        let c = self.conns.get_mut(&id)?;
        if c.engine.has_output() {
            let out = c.engine.output();
            let bytes = out.split().freeze();
            c.bytes_out += bytes.len() as u64;
            // The written bytes keep the old allocation; start the next batch in
            // one the size of this one, rather than growing from nothing by
            // doubling (each step a realloc that copies every frame so far).
            out.reserve(bytes.len().clamp(OUTPUT_MIN, OUTPUT_MAX));
            Some(bytes)
        } else {
            None
        }
    }

    pub fn conn_has_output(&self, id: u64) -> bool {
        self.conns.get(&id).is_some_and(|c| c.engine.has_output())
    }

    pub fn conn_wrote(&mut self, id: u64, now: Instant) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.engine.wrote(now);
        }
    }

    /// True when the connection is over (close exchanged or socket gone).
    pub fn conn_closed(&self, id: u64) -> bool {
        self.conns
            .get(&id)
            .map(|c| c.engine.is_closed())
            .unwrap_or(true)
    }

    /// True while we wait for the client to answer our close.
    pub fn conn_closing(&self, id: u64) -> bool {
        self.conns.get(&id).is_some_and(|c| c.engine.is_closing())
    }

    /// Closes a client connection from our side (shutdown, admission refusal).
    pub fn conn_close(&mut self, id: u64, error: ErrorCondition) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.engine.close_with(error);
        }
        self.conn_events(id);
    }

    /// Management's view of this shard's connections.
    pub fn connection_infos(&self) -> Vec<super::ConnectionInfo> {
        let mut v: Vec<_> = self
            .conns
            .iter()
            .map(|(id, c)| super::ConnectionInfo {
                shard: self.id,
                id: *id,
                address: c.peer.clone(),
                user: c.user.clone(),
                container: c.container.clone(),
                moved: c.moved(),
            })
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }

    pub fn conn_ids(&self) -> Vec<u64> {
        self.conns.keys().copied().collect()
    }

    /// Forgets a connection whose socket is closed.
    pub fn remove_connection(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            if !c.engine.is_closed() {
                c.engine.input_eof();
            }
        }
        self.conn_events(id);
        if let Some(c) = self.conns.remove(&id) {
            self.closed_totals.add(&c.moved());
        }
        self.dirty.retain(|c| *c != id);
    }

    pub(super) fn conn_events(&mut self, id: u64) {
        loop {
            let Some(ev) = self.conns.get_mut(&id).and_then(|c| c.engine.poll_event()) else {
                break;
            };
            self.on_event(id, ev);
        }
        // Output to write, or a closed connection whose writer must finish up.
        if self
            .conns
            .get(&id)
            .is_some_and(|c| c.engine.has_output() || c.engine.is_closed())
        {
            self.mark_dirty(id);
        }
    }

    pub(super) fn on_event(&mut self, id: u64, ev: Event) {
        if self.conns.get(&id).is_some_and(|c| c.owned) {
            if let (Event::Opened(open), Some(c)) = (&ev, self.conns.get_mut(&id)) {
                c.opened = true;
                c.container = open.container_id.clone();
            }
            return self.with_ext(move |ext, shard| ext.owned_event(shard, id, ev));
        }
        match ev {
            Event::Authenticated { user } => {
                let shown = user.as_deref().map(crate::shown::shown);
                tracing::debug!(conn = id, user = ?shown, "authenticated");
                if let Some(c) = self.conns.get_mut(&id) {
                    c.user = user;
                }
            }
            Event::Opened(open) => {
                if self.settings.require_encryption
                    && self
                        .conns
                        .get(&id)
                        .is_some_and(|c| !c.encrypted && !c.owned)
                {
                    let error = ErrorCondition::new(
                        condition::UNAUTHORIZED_ACCESS,
                        "this broker requires encryption (require-encryption): connect with TLS (amqps:// or ssl:, the ssl-port)",
                    );
                    if let Some(c) = self.conns.get_mut(&id) {
                        tracing::info!(conn = id, peer = %c.peer, "refusing an unencrypted connection");
                        c.engine.close_with(error);
                    }
                    return;
                }
                let access = Access::Connect {
                    properties: open.properties.as_ref(),
                };
                if let Err(error) = self.allowed(id, &access) {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.engine.close_with(error);
                    }
                    return;
                }
                let claims = self
                    .ext
                    .as_ref()
                    .is_some_and(|e| e.is_admin(open.properties.as_ref()));
                let user = self.conns.get(&id).and_then(|c| c.user.clone());
                if claims && !self.settings.acts_as_cluster(user.as_deref()) {
                    let who = user.as_deref().unwrap_or("anonymous");
                    let error = ErrorCondition::new(
                        condition::UNAUTHORIZED_ACCESS,
                        format!(
                            "user '{who}' may not act as the cluster (qpid.ha-admin, qpid.ha-backup): only the cluster's user (ha-username) may"
                        ),
                    );
                    if let Some(c) = self.conns.get_mut(&id) {
                        tracing::warn!(conn = id, peer = %c.peer, "refusing a connection: {error}");
                        c.engine.close_with(error);
                    }
                    return;
                }
                let admin = claims;
                if let Some(c) = self.conns.get_mut(&id) {
                    let container = crate::shown::shown(&open.container_id);
                    tracing::debug!(conn = id, peer = %c.peer, %container, admin, "connection opened");
                    c.container = open.container_id;
                    c.opened = true;
                    c.admin = admin;
                }
                if let super::admission::Admission::AdminOnly { reason } = &self.admission {
                    if !admin {
                        let error =
                            ErrorCondition::new(condition::CONNECTION_FORCED, reason.clone());
                        if let Some(c) = self.conns.get_mut(&id) {
                            tracing::info!(conn = id, peer = %c.peer, "refusing client: {reason}");
                            c.engine.abort(error);
                        }
                    }
                }
            }
            Event::Begun { .. } | Event::Ended { .. } => {}
            Event::Attached { link, attach } => self.on_attach(id, link, attach),
            Event::Transfer {
                link,
                delivery_id,
                settled,
                payload,
                ..
            } => self.on_publish(id, link, delivery_id, settled, payload),
            Event::Disposition {
                channel,
                disposition,
            } => {
                if self.conns.get(&id).is_some_and(|c| !c.claimed.is_empty()) {
                    let ev = Event::Disposition {
                        channel,
                        disposition: disposition.clone(),
                    };
                    self.with_ext(move |ext, shard| ext.link_event(shard, id, &ev));
                }
                self.on_disposition(id, channel, disposition)
            }
            Event::Credit { link, .. } | Event::Detached { link, .. }
                if self
                    .conns
                    .get(&id)
                    .is_some_and(|c| c.claimed.contains(&link)) =>
            {
                if let (Event::Detached { .. }, Some(c)) = (&ev, self.conns.get_mut(&id)) {
                    c.claimed.remove(&link);
                }
                self.with_ext(move |ext, shard| ext.link_event(shard, id, &ev));
            }
            Event::Credit { link, drain, .. } => self.on_credit(id, link, drain),
            Event::Detached { link, .. } => self.on_detached(id, link),
            Event::Closed { error, by_peer } => {
                if let Some(e) = error {
                    let peer = self
                        .conns
                        .get(&id)
                        .map(|c| c.peer.clone())
                        .unwrap_or_default();
                    if by_peer {
                        tracing::debug!(conn = id, %peer, "peer closed: {e}");
                    } else {
                        tracing::info!(conn = id, %peer, "closing connection: {e}");
                    }
                }
            }
        }
    }

    // -----------------------------------------------------------------------
    // Attach

    fn on_attach(&mut self, id: u64, link: LinkKey, attach: Attach) {
        let client_sends = attach.role == Role::Sender;
        let (address, dynamic) = if client_sends {
            let t = attach.target.as_ref();
            (
                t.and_then(|t| t.address.clone()),
                t.is_some_and(|t| t.dynamic),
            )
        } else {
            let s = attach.source.as_ref();
            (
                s.and_then(|s| s.address.clone()),
                s.is_some_and(|s| s.dynamic),
            )
        };
        let mut node = address.as_deref().unwrap_or("");
        if self.claims(node) {
            if let Some(n) = self.ext.as_ref().and_then(|e| e.access_node(&attach)) {
                node = n;
            }
        }
        let access = if client_sends {
            Access::Publish { node }
        } else {
            Access::Consume {
                node,
                browse: is_browser(&attach),
                dynamic,
            }
        };
        if let Err(e) = self.allowed(id, &access) {
            return self.refuse(id, link, &attach, e);
        }
        if self.admin_only() {
            if let Err(e) = self.backup_allows(&attach, client_sends, dynamic, address.as_deref()) {
                return self.refuse(id, link, &attach, e);
            }
        }
        if dynamic {
            let op = ConfigOp::DeclareQueue {
                name: None,
                settings: QueueSettings {
                    auto_delete: true,
                    ..self.settings.default_queue.clone()
                },
                bind: None,
                strict: false,
            };
            return self.request_for_attach(id, link, attach, op);
        }
        let address = address.unwrap_or_default();
        if self.claims(&address) {
            let home = self.ext.as_ref().and_then(|e| e.home(self));
            if let Some(home) = home.filter(|h| *h != self.id) {
                if !self.can_hand_over(id, home) {
                    let error = ErrorCondition::new(
                        condition::NOT_ALLOWED,
                        "attach this link on a connection of its own",
                    );
                    return self.refuse(id, link, &attach, error);
                }
                self.hand_over(id, home, vec![Event::Attached { link, attach }]);
                return;
            }
            self.claim_link(id, link);
            return self.with_ext(move |ext, shard| ext.attach(shard, id, link, attach));
        }
        if address == crate::management::NODE {
            if client_sends {
                return self.start_publisher(id, link, &attach, Dest::Management, None);
            }
            let error = ErrorCondition::new(
                condition::NOT_ALLOWED,
                "$management takes requests; receive replies on a reply-to queue (e.g. a dynamic one)",
            );
            return self.refuse(id, link, &attach, error);
        }
        if address.is_empty() {
            if client_sends {
                return self.start_publisher(id, link, &attach, Dest::Anonymous, None);
            }
            return self.refuse(
                id,
                link,
                &attach,
                ErrorCondition::new(
                    condition::INVALID_FIELD,
                    "a receiving link needs a source address",
                ),
            );
        }
        if let Some(ex) = self.catalogue.exchanges.get(address.as_str()) {
            let name = ex.name.clone();
            if client_sends {
                return self.start_publisher(id, link, &attach, Dest::Exchange(name), None);
            }
            let key = match subscription_key(attach.source.as_ref()) {
                Ok(k) => k,
                Err(e) => return self.refuse(id, link, &attach, e),
            };
            let op = ConfigOp::DeclareQueue {
                name: None,
                settings: QueueSettings {
                    auto_delete: true,
                    ..self.settings.default_queue.clone()
                },
                bind: Some((name.to_string(), key)),
                strict: false,
            };
            return self.request_for_attach(id, link, attach, op);
        }
        if let Some((name, entry)) = self.catalogue.queues.get_key_value(address.as_str()) {
            if let Some(remote) = &entry.settings.replica_of {
                // A replica changes only as its original does; consumers
                // only where the operator allows them.
                let consumes = !client_sends && !is_browser(&attach);
                if client_sends || (consumes && !self.settings.replica_consumers) {
                    let error = replica_refusal(name, remote);
                    return self.refuse(id, link, &attach, error);
                }
            }
            let (name, owner) = (name.clone(), entry.owner);
            if self.moves_to(id, owner) {
                self.hand_over(id, owner, vec![Event::Attached { link, attach }]);
                return;
            }
            return self.start_queue_link(id, link, &attach, name, owner);
        }
        if address.starts_with('$') && address != crate::management::NODE {
            // Names of the broker's own nodes are never queues: one that no
            // module here serves is missing, not created.
            let error = ErrorCondition::new(
                condition::NOT_FOUND,
                format!(
                    "no node '{}' on this broker (not a queue name: its module does not run here)",
                    crate::shown::shown(&address)
                ),
            );
            return self.refuse(id, link, &attach, error);
        }
        if !self.settings.auto_create_queues {
            return self.refuse(id, link, &attach, not_found(&address));
        }
        let settings = match node_settings(&self.settings.default_queue, &attach, client_sends) {
            Ok(s) => s,
            Err(e) => return self.refuse(id, link, &attach, e),
        };
        // The queue will be declared on the shard its name hashes to: go
        // there first, and declare it from there.
        let owner = crate::placement::shard_of(&address, self.workers());
        if self.moves_to(id, owner) {
            self.hand_over(id, owner, vec![Event::Attached { link, attach }]);
            return;
        }
        let op = ConfigOp::DeclareQueue {
            name: Some(address),
            settings,
            bind: None,
            strict: false,
        };
        self.request_for_attach(id, link, attach, op)
    }

    /// Connection placement: whether connection `id`, attaching a link to a
    /// queue that shard `owner` owns, should move there first. It moves when
    /// this is its only link (a connection with links stays: their state
    /// names this shard), so a client with one queue per connection has its
    /// messages read, queued and delivered on one shard, with no ring
    /// between. A connection's later links to other queues work across
    /// shards, as every link does without placement.
    fn moves_to(&self, id: u64, owner: usize) -> bool {
        self.settings.connection_placement && self.can_hand_over(id, owner)
    }

    /// On a backup, admin connections are read-only: management requests, their
    /// reply queues, browsing existing queues and the replication link only.
    fn backup_allows(
        &self,
        attach: &Attach,
        client_sends: bool,
        dynamic: bool,
        address: Option<&str>,
    ) -> Result<(), ErrorCondition> {
        let browsing = is_browser(attach);
        let allowed = match (client_sends, address) {
            (true, Some(a)) => a == crate::management::NODE,
            (false, _) if dynamic => true,
            (false, Some(a)) => {
                self.claims(a) || (browsing && self.catalogue.queues.contains_key(a))
            }
            _ => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(ErrorCondition::new(
                condition::NOT_ALLOWED,
                "this broker is an HA backup: admin connections may manage, browse and \
                 read, not send, consume or create; use the primary",
            ))
        }
    }

    /// Whether attaches to `address` are the extension's.
    fn claims(&self, address: &str) -> bool {
        self.ext.as_ref().is_some_and(|e| e.claims(address))
    }

    fn request_for_attach(&mut self, id: u64, link: LinkKey, attach: Attach, op: ConfigOp) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.links.insert(link, LinkRole::Pending);
        }
        let req = self.next_req;
        self.next_req += 1;
        self.requests.insert(
            req,
            Waiting::Attach {
                conn: id,
                link,
                attach: Box::new(attach),
            },
        );
        self.send(
            0,
            ShardMsg::ConfigRequest {
                origin: self.id,
                req,
                op,
            },
        );
    }

    pub(super) fn on_config_reply(&mut self, req: u64, result: Result<ConfigDone, ErrorCondition>) {
        let Some(waiting) = self.requests.remove(&req) else {
            return;
        };
        let (conn, link, attach) = match waiting {
            Waiting::Attach { conn, link, attach } => (conn, link, attach),
            Waiting::Management(reply) => return self.on_management_config_reply(reply, result),
            Waiting::Extension => {
                return self.with_ext(move |ext, shard| ext.config_done(shard, req, result))
            }
        };
        // The link may have gone while we waited.
        let still_pending = self
            .conns
            .get(&conn)
            .is_some_and(|c| matches!(c.links.get(&link), Some(LinkRole::Pending)));
        if !still_pending {
            return;
        }
        match result {
            Ok(ConfigDone {
                queue: Some((name, owner)),
            }) => self.start_queue_link(conn, link, &attach, name, owner),
            Ok(ConfigDone { queue: None }) => self.refuse(
                conn,
                link,
                &attach,
                ErrorCondition::new(condition::INTERNAL_ERROR, "no queue declared"),
            ),
            Err(e) => self.refuse(conn, link, &attach, e),
        }
        self.conn_events(conn);
    }

    fn refuse(&mut self, id: u64, link: LinkKey, attach: &Attach, error: ErrorCondition) {
        if let Some(c) = self.conns.get_mut(&id) {
            let name = crate::shown::shown(&attach.name);
            tracing::debug!(conn = id, link = %name, "refusing attach: {error}");
            c.links.remove(&link);
            c.engine.refuse_attach(link, attach, error);
            self.mark_dirty(id);
        }
    }

    fn start_queue_link(
        &mut self,
        id: u64,
        link: LinkKey,
        attach: &Attach,
        name: Arc<str>,
        owner: usize,
    ) {
        // Where the queue lives, and which shard serves this link (they are
        // the same when connection placement moved the connection there).
        let props = Some(Value::Map(vec![
            (
                Value::symbol("tandem.queue-shard"),
                Value::Uint(owner as u32),
            ),
            (
                Value::symbol("tandem.link-shard"),
                Value::Uint(self.id as u32),
            ),
        ]));
        if attach.role == Role::Sender {
            return self.start_publisher(id, link, attach, Dest::Queue { name, owner }, props);
        }
        let source = attach.source.clone().unwrap_or_default();
        let browse = source.distribution_mode.as_deref() == Some("copy");
        // The client asked for pre-settled deliveries (at-most-once).
        let settled = attach.snd_settle_mode == Some(1);
        let reply_source = Source {
            address: Some(if source.dynamic {
                name.to_string()
            } else {
                source.address.clone().unwrap_or_else(|| name.to_string())
            }),
            ..source
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.engine.accept_attach(
            link,
            attach,
            Some(reply_source),
            attach.target.clone(),
            props,
        );
        c.links.insert(
            link,
            LinkRole::Consumer {
                queue: name.clone(),
                owner,
                requested: 0,
                buffer: VecDeque::new(),
                draining: false,
            },
        );
        self.mark_dirty(id);
        let consumer = consumer_ref(self.id, id, link);
        self.send(
            owner,
            ShardMsg::Subscribe {
                queue: name,
                consumer,
                browse,
                settled,
            },
        );
        // Credit the client granted before our attach reply is in the engine already.
        if self
            .conns
            .get(&id)
            .is_some_and(|c| c.engine.credit(link) > 0)
        {
            self.on_credit(id, link, false);
        }
    }

    fn start_publisher(
        &mut self,
        id: u64,
        link: LinkKey,
        attach: &Attach,
        dest: Dest,
        props: Option<Value>,
    ) {
        let window = self.settings.link_credit;
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let target = match (&dest, attach.target.clone()) {
            (Dest::Queue { name, .. }, Some(t)) if t.dynamic => Some(Target {
                address: Some(name.to_string()),
                ..t
            }),
            (_, t) => t,
        };
        c.engine
            .accept_attach(link, attach, attach.source.clone(), target, props);
        c.links.insert(
            link,
            LinkRole::Publisher {
                dest,
                outstanding: 0,
            },
        );
        c.engine.grant_credit(link, window, false);
        self.mark_dirty(id);
    }
}

/// The binding a subscription to an exchange asks for, from its source filter.
fn subscription_key(source: Option<&Source>) -> Result<BindingKey, ErrorCondition> {
    let Some(Value::Map(filters)) = source.and_then(|s| s.filter.as_ref()) else {
        return Ok(BindingKey::All);
    };
    for (_, f) in filters {
        let Value::Described(descriptor, value) = f else {
            continue;
        };
        let is = |(sym, code): (&str, u64)| {
            descriptor.as_str() == Some(sym) || descriptor.as_u64() == Some(code)
        };
        if is(DIRECT_FILTER) || is(TOPIC_FILTER) {
            let key = value.as_str().ok_or_else(|| {
                ErrorCondition::new(
                    condition::INVALID_FIELD,
                    "binding filter value must be a string",
                )
            })?;
            return Ok(BindingKey::Key(key.to_owned()));
        }
        if is(HEADERS_FILTER) {
            return headers_key(value).ok_or_else(|| {
                ErrorCondition::new(
                    condition::INVALID_FIELD,
                    "headers filter value must be a map",
                )
            });
        }
    }
    Ok(BindingKey::All)
}

/// Queue settings from an attach's node properties (create-on-demand).
fn node_settings(
    defaults: &QueueSettings,
    attach: &Attach,
    client_sends: bool,
) -> Result<QueueSettings, ErrorCondition> {
    let (props, durable) = if client_sends {
        let t = attach.target.as_ref();
        (
            t.and_then(|t| t.dynamic_node_properties.as_ref()),
            t.map(|t| t.durable),
        )
    } else {
        let s = attach.source.as_ref();
        (
            s.and_then(|s| s.dynamic_node_properties.as_ref()),
            s.map(|s| s.durable),
        )
    };
    let mut settings = defaults.clone();
    if durable.unwrap_or(0) > 0 {
        settings.durable = true;
    }
    let Some(props) = props else {
        return Ok(settings);
    };
    if props.map_get("replica-of").is_some() {
        return Err(ErrorCondition::new(
            condition::NOT_ALLOWED,
            "replica-of is set through management (tandem-ha replicate), not by an attach",
        ));
    }
    settings
        .with_attributes(props)
        .map_err(|e| ErrorCondition::new(condition::INVALID_FIELD, e))
}
