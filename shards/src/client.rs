//! A small blocking AMQP 1.0 client on the same sans-I/O engine the broker uses:
//! connect (trying each address of a broker URL), SASL, one session, senders with
//! settlement tracking, receivers with credit. For the admin tools, tests and the
//! HA links; the perf harness drives the engine itself.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::amqp::codec::Value;
use crate::amqp::connection::{Connection, ConnectionConfig, Event, LinkKey, Sasl};
use crate::amqp::message::DecodedMessage;
use crate::amqp::performative::{Attach, DeliveryState, ErrorCondition, Role, Source, Target};
use crate::url::BrokerUrl;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed by the broker: {0}")]
    Closed(String),
    #[error("link '{address}' refused: {error}")]
    Refused { address: String, error: String },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
}

/// Connection options.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Extra open-frame properties (e.g. `qpid.ha-admin`).
    pub properties: Vec<(String, Value)>,
    pub timeout: Option<Duration>,
    pub container_id: Option<String>,
    /// TLS for `ssl:` addresses (`amqps:` URLs): the CA that signed the
    /// broker's certificate, and the client's own certificate if any.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// The socket, plain or under TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => t.flush(),
        }
    }
}

/// A message received on a receiver link.
#[derive(Debug, Clone)]
pub struct Received {
    pub link: LinkKey,
    pub delivery_id: u32,
    pub settled: bool,
    pub payload: Bytes,
}

impl Received {
    pub fn decode(&self) -> Option<DecodedMessage> {
        DecodedMessage::decode(&self.payload).ok()
    }
}

pub struct Client {
    stream: Stream,
    conn: Connection,
    channel: u16,
    read_buf: BytesMut,
    timeout: Duration,
    /// The broker's open-frame properties.
    pub remote_properties: Option<Value>,
    /// The broker's attach properties, per link.
    link_properties: HashMap<LinkKey, Option<Value>>,
    attached: HashMap<LinkKey, Attach>,
    refused: HashMap<LinkKey, String>,
    inbox: VecDeque<Received>,
    /// Outcomes of our unsettled sends, by delivery id.
    outcomes: HashMap<u32, DeliveryState>,
    closed: Option<String>,
    opened: bool,
    begun: bool,
    next_link: u32,
}

impl Client {
    /// Connects to the first address of `url` that answers, authenticates and
    /// begins a session.
    pub fn connect(url: &BrokerUrl, opts: &ClientOptions) -> Result<Client, ClientError> {
        let timeout = opts.timeout.unwrap_or(Duration::from_secs(10));
        let mut last = None;
        for addr in &url.addrs {
            let target = addr.socket_string();
            let tls = match (addr.transport, &opts.tls) {
                (crate::url::Transport::Tcp, _) => None,
                (crate::url::Transport::Ssl, Some(config)) => Some(config.clone()),
                (crate::url::Transport::Ssl, None) => {
                    last = Some(ClientError::Connect {
                        addr: format!("ssl:{target}"),
                        source: std::io::Error::other(
                            "ssl: addresses need a trust file (--ssl-trustfile: the CA of the broker's certificate)",
                        ),
                    });
                    continue;
                }
            };
            let resolved = match target.to_socket_addrs() {
                Ok(mut a) => a.next(),
                Err(e) => {
                    last = Some(ClientError::Connect {
                        addr: target,
                        source: e,
                    });
                    continue;
                }
            };
            let Some(sock) = resolved else { continue };
            match TcpStream::connect_timeout(&sock, timeout) {
                Ok(socket) => {
                    let stream = match tls {
                        None => Stream::Plain(socket),
                        Some(config) => {
                            let name = crate::tls::server_name(&addr.host)
                                .map_err(|e| ClientError::Closed(e.to_string()))?;
                            let session = rustls::ClientConnection::new(config, name)
                                .map_err(|e| ClientError::Closed(format!("TLS: {e}")))?;
                            Stream::Tls(Box::new(rustls::StreamOwned::new(session, socket)))
                        }
                    };
                    return Client::handshake(stream, url, addr.host.clone(), opts, timeout);
                }
                Err(e) => {
                    last = Some(ClientError::Connect {
                        addr: target,
                        source: e,
                    })
                }
            }
        }
        Err(last.unwrap_or(ClientError::Closed("no address in URL".into())))
    }

    fn handshake(
        stream: Stream,
        url: &BrokerUrl,
        host: String,
        opts: &ClientOptions,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        stream.socket().set_nodelay(true)?;
        let credentials = url
            .user
            .clone()
            .map(|u| (u, url.password.clone().unwrap_or_default()));
        let properties = (!opts.properties.is_empty()).then(|| {
            Value::Map(
                opts.properties
                    .iter()
                    .map(|(k, v)| (Value::symbol(k), v.clone()))
                    .collect(),
            )
        });
        let cfg = ConnectionConfig {
            container_id: opts
                .container_id
                .clone()
                .unwrap_or_else(|| format!("tandem-client-{}", std::process::id())),
            max_frame_size: 1024 * 1024,
            channel_max: 16,
            idle_timeout: None,
            properties,
            max_message_size: 256 * 1024 * 1024,
            hostname: Some(host),
            sasl: Sasl::Client {
                credentials,
                skip: false,
            },
        };
        let conn = Connection::client(cfg, Instant::now());
        let mut c = Client {
            stream,
            conn,
            channel: 0,
            read_buf: BytesMut::with_capacity(64 * 1024),
            timeout,
            remote_properties: None,
            link_properties: HashMap::new(),
            attached: HashMap::new(),
            refused: HashMap::new(),
            inbox: VecDeque::new(),
            outcomes: HashMap::new(),
            closed: None,
            opened: false,
            begun: false,
            next_link: 0,
        };
        c.wait_for("open", |c| c.opened)?;
        c.channel = c.conn.begin();
        c.wait_for("begin", |c| c.begun)?;
        Ok(c)
    }

    /// Writes pending output, reads what is available (waiting up to `wait`), and
    /// turns engine events into client state.
    fn pump(&mut self, wait: Duration) -> Result<(), ClientError> {
        if self.conn.has_output() {
            let out = self.conn.output().split();
            self.stream.write_all(&out)?;
            self.conn.wrote(Instant::now());
        }
        self.stream
            .socket()
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => self.conn.input_eof(),
            Ok(n) => {
                self.read_buf.extend_from_slice(&chunk[..n]);
                self.conn.input(&mut self.read_buf, Instant::now());
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        // A signal (glommio's, in a process that runs a broker
                        // too): nothing was read; the caller's loop reads again.
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e.into()),
        }
        while let Some(ev) = self.conn.poll_event() {
            self.on_event(ev);
        }
        if self.conn.has_output() {
            let out = self.conn.output().split();
            self.stream.write_all(&out)?;
        }
        Ok(())
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Opened(open) => {
                self.opened = true;
                self.remote_properties = open.properties;
            }
            Event::Begun { .. } => self.begun = true,
            Event::Attached { link, attach } => {
                let refused = if attach.role == Role::Sender {
                    attach.source.is_none()
                } else {
                    attach.target.is_none()
                };
                self.link_properties.insert(link, attach.properties.clone());
                if !refused {
                    self.attached.insert(link, attach);
                }
            }
            Event::Detached { link, error, .. } => {
                self.attached.remove(&link);
                self.refused.insert(
                    link,
                    error
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "detached".into()),
                );
            }
            Event::Transfer {
                link,
                delivery_id,
                settled,
                payload,
                ..
            } => self.inbox.push_back(Received {
                link,
                delivery_id,
                settled,
                payload,
            }),
            Event::Disposition { disposition, .. } => {
                if let Some(state) = disposition.state {
                    let last = disposition.last.unwrap_or(disposition.first);
                    let mut id = disposition.first;
                    loop {
                        self.outcomes.insert(id, state.clone());
                        if id == last {
                            break;
                        }
                        id = id.wrapping_add(1);
                    }
                }
            }
            Event::Closed { error, .. } => {
                self.closed = Some(
                    error
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "closed".into()),
                );
            }
            Event::Credit { .. } | Event::Ended { .. } | Event::Authenticated { .. } => {}
        }
    }

    fn wait_for(
        &mut self,
        what: &'static str,
        done: impl Fn(&Client) -> bool,
    ) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if done(self) {
                return Ok(());
            }
            if let Some(why) = &self.closed {
                return Err(ClientError::Closed(why.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout(self.timeout, what));
            }
            self.pump(deadline - now)?;
        }
    }

    fn attach(
        &mut self,
        role: Role,
        source: Source,
        target: Target,
        settled: bool,
    ) -> Result<LinkKey, ClientError> {
        let address = if role == Role::Sender {
            target.address.clone()
        } else {
            source.address.clone()
        }
        .unwrap_or_default();
        self.next_link += 1;
        let name = format!("{}-{}-{}", address, std::process::id(), self.next_link);
        let attach = Attach {
            snd_settle_mode: settled.then_some(1),
            ..Attach::new(name, role, Some(source), Some(target))
        };
        let link = self
            .conn
            .attach(self.channel, attach)
            .ok_or_else(|| ClientError::Closed("session is gone".into()))?;
        self.wait_for("attach", |c| {
            c.attached.contains_key(&link) || c.refused.contains_key(&link)
        })?;
        if let Some(error) = self.refused.remove(&link) {
            return Err(ClientError::Refused { address, error });
        }
        Ok(link)
    }

    /// Attaches a sending link to `address`.
    pub fn sender(&mut self, address: &str) -> Result<LinkKey, ClientError> {
        self.sender_to(Target {
            address: Some(address.to_owned()),
            ..Default::default()
        })
    }

    /// Attaches a sending link to a target given in full (node properties...).
    pub fn sender_to(&mut self, target: Target) -> Result<LinkKey, ClientError> {
        self.attach(Role::Sender, Source::default(), target, false)
    }

    /// Attaches a receiving link from `source` and grants `credit`.
    pub fn receiver_from(&mut self, source: Source, credit: u32) -> Result<LinkKey, ClientError> {
        let link = self.attach(Role::Receiver, source, Target::default(), false)?;
        self.conn.grant_credit(link, credit, false);
        Ok(link)
    }

    pub fn receiver(&mut self, address: &str, credit: u32) -> Result<LinkKey, ClientError> {
        self.receiver_from(
            Source {
                address: Some(address.to_owned()),
                ..Default::default()
            },
            credit,
        )
    }

    /// A receiver on a broker-named temporary queue; returns the link and its address.
    pub fn dynamic_receiver(&mut self, credit: u32) -> Result<(LinkKey, String), ClientError> {
        let link = self.receiver_from(
            Source {
                dynamic: true,
                ..Default::default()
            },
            credit,
        )?;
        let address = self
            .attached
            .get(&link)
            .and_then(|a| a.source.as_ref())
            .and_then(|s| s.address.clone())
            .unwrap_or_default();
        Ok((link, address))
    }

    /// The properties the broker put on its attach of `link`.
    pub fn link_properties(&self, link: LinkKey) -> Option<&Value> {
        self.link_properties.get(&link).and_then(Option::as_ref)
    }

    /// Sends one message, waiting for credit; returns its delivery id.
    pub fn send(
        &mut self,
        link: LinkKey,
        payload: &[u8],
        settled: bool,
    ) -> Result<u32, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let mut tag_source = [0u8; 8];
        loop {
            if self.conn.credit(link) > 0 {
                self.next_link = self.next_link.wrapping_add(1);
                tag_source.copy_from_slice(&u64::from(self.next_link).to_be_bytes());
                if let Some(id) = self.conn.send(link, &tag_source, payload, settled) {
                    return Ok(id);
                }
            }
            if let Some(why) = &self.closed {
                return Err(ClientError::Closed(why.clone()));
            }
            if let Some(why) = self.refused.get(&link) {
                return Err(ClientError::Closed(why.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout(self.timeout, "credit"));
            }
            self.pump(deadline - now)?;
        }
    }

    /// Waits for the broker's outcome of an unsettled send.
    pub fn outcome(&mut self, delivery_id: u32) -> Result<DeliveryState, ClientError> {
        self.wait_for("settlement", |c| c.outcomes.contains_key(&delivery_id))?;
        self.outcomes
            .remove(&delivery_id)
            .ok_or(ClientError::Timeout(self.timeout, "settlement"))
    }

    /// Exchanges bytes with the broker for up to `wait` (or less when bytes arrive).
    pub fn poll(&mut self, wait: Duration) -> Result<(), ClientError> {
        if let Some(why) = &self.closed {
            return Err(ClientError::Closed(why.clone()));
        }
        self.pump(wait)
    }

    /// Outcomes of unsettled sends that arrived so far, removed from the client.
    pub fn take_outcomes(&mut self) -> Vec<(u32, DeliveryState)> {
        self.outcomes.drain().collect()
    }

    /// Messages already received and not yet taken.
    pub fn take_received(&mut self) -> Vec<Received> {
        self.inbox.drain(..).collect()
    }

    /// Settles deliveries `first..=last` of our session at once.
    pub fn settle_range(
        &mut self,
        first: u32,
        last: u32,
        state: DeliveryState,
    ) -> Result<(), ClientError> {
        self.conn.disposition(
            self.channel,
            Role::Receiver,
            first,
            last,
            true,
            Some(&state),
        );
        Ok(())
    }

    /// Writes whatever the engine has queued, without waiting for input.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        if self.conn.has_output() {
            let out = self.conn.output().split();
            self.stream.write_all(&out)?;
            self.conn.wrote(Instant::now());
        }
        Ok(())
    }

    /// Sends without waiting: `None` when the link has no credit now.
    pub fn try_send(
        &mut self,
        link: LinkKey,
        tag: &[u8],
        payload: &[u8],
        settled: bool,
    ) -> Option<u32> {
        self.conn.send(link, tag, payload, settled)
    }

    /// The next message on any receiver, waiting up to `wait`.
    pub fn receive(&mut self, wait: Duration) -> Result<Option<Received>, ClientError> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(m) = self.inbox.pop_front() {
                return Ok(Some(m));
            }
            if let Some(why) = &self.closed {
                return Err(ClientError::Closed(why.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.pump(deadline - now)?;
        }
    }

    /// Settles a received message with `state` (accepted, released, ...).
    pub fn settle(&mut self, m: &Received, state: DeliveryState) -> Result<(), ClientError> {
        if !m.settled {
            self.conn.disposition(
                self.channel,
                Role::Receiver,
                m.delivery_id,
                m.delivery_id,
                true,
                Some(&state),
            );
            self.pump(Duration::from_millis(0))?;
        }
        Ok(())
    }

    pub fn accept(&mut self, m: &Received) -> Result<(), ClientError> {
        self.settle(m, DeliveryState::Accepted)
    }

    /// Grants `credit` on a receiver.
    pub fn flow(&mut self, link: LinkKey, credit: u32) -> Result<(), ClientError> {
        self.conn.grant_credit(link, credit, false);
        self.pump(Duration::from_millis(0))
    }

    /// Closes the connection politely (waits briefly for the broker's close).
    pub fn close(mut self) -> Result<(), ClientError> {
        self.conn.close(None);
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.conn.is_closed() && Instant::now() < deadline {
            if self.pump(Duration::from_millis(100)).is_err() {
                break;
            }
        }
        Ok(())
    }

    /// Closes the connection with an error condition (protocol tests).
    pub fn close_with(mut self, error: ErrorCondition) -> Result<(), ClientError> {
        self.conn.close_with(error);
        self.pump(Duration::from_millis(0))
    }
}
