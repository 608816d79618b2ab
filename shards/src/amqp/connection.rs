//! The sans-I/O AMQP 1.0 connection engine, for both ends of a connection.
//!
//! Bytes go in through [`Connection::input`], the clock through
//! [`Connection::tick`]; events come out of [`Connection::poll_event`] and bytes to
//! write accumulate in [`Connection::output`]. The engine owns protocol state
//! (negotiation, SASL, sessions, handles, delivery ids, windows, credit, heartbeats);
//! what a link *means* (a queue, an exchange, a reply) is the application's business.
//! Protocol violations never panic: they close the connection with the spec's error
//! condition and surface as [`Event::Closed`].

use std::collections::VecDeque;

use hashbrown::HashMap;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::Value;
use super::frame::{
    self, begin_frame, decode_amqp, decode_sasl, end_frame, split_frame, write_frame,
    write_heartbeat, write_sasl_frame, AMQP_HEADER, FRAME_AMQP, MIN_MAX_FRAME_SIZE, SASL_HEADER,
};
use super::performative::{
    condition, Attach, Begin, Close, Detach, Disposition, End, ErrorCondition, Flow, Open,
    Performative, Role, SaslFrame, Source, Target, Transfer,
};

/// A link as the application names it: local channel and local handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkKey {
    pub channel: u16,
    pub handle: u32,
}

/// The SASL mechanism whose identity comes from the transport (TLS).
pub const EXTERNAL: &str = "EXTERNAL";

/// Decides SASL logins on the server side: mechanism and initial response in,
/// authenticated user name out (`None` refuses). A one-step mechanism (PLAIN,
/// ANONYMOUS) is a closure of this shape; [`SaslServer`] takes more steps.
pub type Authenticator = Box<dyn SaslServer>;

/// What a mechanism says after each message of the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslStep {
    /// Send this challenge and wait for the client's response.
    Challenge(Bytes),
    /// Logged in as `user`; `additional` goes with the outcome.
    Done {
        user: String,
        additional: Option<Bytes>,
    },
    /// Refused, and why (for the log; the client sees outcome `auth`).
    Refused(String),
}

/// The server side of SASL mechanisms that may take several steps (SCRAM).
pub trait SaslServer: Send {
    /// The client chose `mechanism` (one offered) with `initial` response.
    fn start(&mut self, mechanism: &str, initial: &[u8]) -> SaslStep;
    /// The client's response to the last challenge.
    fn respond(&mut self, response: &[u8]) -> SaslStep {
        let _ = response;
        SaslStep::Refused("no challenge was sent".into())
    }
}

impl<F: Fn(&str, &[u8]) -> Option<String> + Send> SaslServer for F {
    fn start(&mut self, mechanism: &str, initial: &[u8]) -> SaslStep {
        match self(mechanism, initial) {
            Some(user) => SaslStep::Done {
                user,
                additional: None,
            },
            None => SaslStep::Refused("authentication failed".into()),
        }
    }
}

/// How this end authenticates.
pub enum Sasl {
    /// Server: offer these mechanisms (empty: no SASL layer accepted, plain AMQP
    /// header only) and decide with the authenticator. `require`: refuse a bare
    /// AMQP header without SASL.
    Server {
        mechanisms: Vec<String>,
        authenticator: Authenticator,
        require: bool,
    },
    /// Client: use SASL with these credentials (`None`: ANONYMOUS), or skip SASL.
    Client {
        credentials: Option<(String, String)>,
        skip: bool,
    },
}

/// Settings of one end.
pub struct ConnectionConfig {
    pub container_id: String,
    /// Largest frame we accept (and advertise).
    pub max_frame_size: u32,
    pub channel_max: u16,
    /// How long the peer may stay silent before we close; `None`: forever.
    pub idle_timeout: Option<Duration>,
    /// Open-frame properties we advertise.
    pub properties: Option<Value>,
    /// Largest message (all frames of one delivery) we reassemble.
    pub max_message_size: usize,
    /// Client: hostname for open and SASL.
    pub hostname: Option<String>,
    pub sasl: Sasl,
}

/// What the engine tells its application. (Events are moved once from the engine
/// to its application; boxing the rare large ones would not pay for itself.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Server: SASL finished (user `None` for an unauthenticated plain header).
    Authenticated { user: Option<String> },
    /// The peer's open arrived (server: our open was sent back already).
    Opened(Open),
    /// A session began (server: our begin was sent back already).
    Begun { channel: u16 },
    /// The peer attached a link (server: answer with [`Connection::accept_attach`]
    /// or [`Connection::refuse_attach`]; client: our attach was answered).
    Attached { link: LinkKey, attach: Attach },
    /// A complete message arrived on a receiving link.
    Transfer {
        link: LinkKey,
        delivery_id: u32,
        tag: Bytes,
        settled: bool,
        payload: Bytes,
    },
    /// The peer settled or updated deliveries `first..=last` of this session.
    Disposition {
        channel: u16,
        disposition: Disposition,
    },
    /// Credit changed on a link (sender side: how much we may send now; receiver
    /// side after the peer's flow: credit left).
    Credit {
        link: LinkKey,
        credit: u32,
        drain: bool,
    },
    /// The peer detached a link (our detach reply was sent if needed).
    Detached {
        link: LinkKey,
        closed: bool,
        error: Option<ErrorCondition>,
    },
    /// A session ended; its links are gone (each reported as detached first).
    Ended {
        channel: u16,
        error: Option<ErrorCondition>,
    },
    /// The connection is closed (by the peer, or by us with `error`): flush output
    /// and drop the socket.
    Closed {
        error: Option<ErrorCondition>,
        by_peer: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the peer's protocol header (server), or for ours to be answered.
    Header,
    /// SASL exchange in progress.
    Sasl,
    /// After SASL, waiting for the AMQP header.
    AmqpHeader,
    /// Frames flow.
    Open,
    /// We sent close; waiting for the peer's.
    Closing,
    /// Done: nothing more is read.
    Closed,
}

struct LinkState {
    /// The link name: how an answering attach finds the link we attached.
    name: String,
    role: Role,
    remote_handle: Option<u32>,
    /// Sender: deliveries sent; receiver: deliveries received (spec 2.6.7).
    delivery_count: u32,
    /// Sender: credit the peer gave us; receiver: credit we granted.
    credit: u32,
    drain: bool,
    /// A multi-frame delivery being reassembled.
    partial: Option<Partial>,
    detached: bool,
}

struct Partial {
    delivery_id: u32,
    tag: Bytes,
    settled: bool,
    buf: BytesMut,
    /// An over-size delivery is read and discarded, then the link is detached.
    oversize: bool,
}

struct Session {
    remote_channel: Option<u16>,
    /// Transfer-id of our next transfer frame (session flow control counts frames).
    next_outgoing_id: u32,
    /// Delivery-id of our next message (one per delivery, however many frames).
    next_delivery_id: u32,
    /// Peer's window for our transfers, computed from its last flow/begin.
    remote_incoming_window: u32,
    next_incoming_id: u32,
    links: HashMap<u32, LinkState>,
    remote_handles: HashMap<u32, u32>,
    next_handle: u32,
    /// Transfer frames waiting for the peer's incoming window to open.
    blocked: VecDeque<Bytes>,
    ended_local: bool,
}

/// The shortest interval between our heartbeats, whatever the peer asks for.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// Our incoming window: large, so peers never stall on it; we bound memory by
/// link credit instead.
const INCOMING_WINDOW: u32 = i32::MAX as u32;

/// One AMQP connection's protocol state.
pub struct Connection {
    cfg: ConnectionConfig,
    server: bool,
    phase: Phase,
    out: BytesMut,
    /// Once we have closed (or aborted), how many bytes of `out` may still
    /// go: nothing after our close. The broker may still answer events that
    /// arrived in the same batch as what made it close (a refused client's
    /// pipelined attach): those answers are dropped here, not sent.
    sealed: Option<usize>,
    events: VecDeque<Event>,
    sessions: HashMap<u16, Session>,
    remote_channels: HashMap<u16, u16>,
    /// What the peer accepts from us (its open), `MIN` until we know.
    remote_max_frame: u32,
    /// Send something at least this often (half the peer's idle timeout).
    heartbeat_every: Option<Duration>,
    /// Broker links send heartbeats at this interval whatever the peer asks.
    own_heartbeat: Option<Duration>,
    last_sent: Instant,
    last_received: Instant,
    sent_open: bool,
    user: Option<String>,
    /// Server: who the transport says the client is (a TLS client
    /// certificate's `CN@realm`), for SASL EXTERNAL.
    external: Option<String>,
    /// Server: a SASL challenge went out; a response is due.
    sasl_challenged: bool,
    /// Client: the only mechanism to use (`ha-mechanism`), if set.
    mechanism: Option<String>,
    /// Frames read and written, for management.
    frames_in: u64,
    frames_out: u64,
}

impl Connection {
    pub fn server(cfg: ConnectionConfig, now: Instant) -> Connection {
        Connection::new(cfg, true, now)
    }

    /// A client connection; its protocol header (and, without SASL, open) is
    /// written to the output at once.
    pub fn client(cfg: ConnectionConfig, now: Instant) -> Connection {
        let mut c = Connection::new(cfg, false, now);
        match &c.cfg.sasl {
            Sasl::Client { skip: false, .. } => c.out.put_slice(&SASL_HEADER),
            _ => {
                c.out.put_slice(&AMQP_HEADER);
                c.send_open();
            }
        }
        c
    }

    fn new(cfg: ConnectionConfig, server: bool, now: Instant) -> Connection {
        Connection {
            cfg,
            server,
            phase: Phase::Header,
            out: BytesMut::with_capacity(16 * 1024),
            sealed: None,
            events: VecDeque::new(),
            sessions: HashMap::new(),
            remote_channels: HashMap::new(),
            remote_max_frame: MIN_MAX_FRAME_SIZE,
            heartbeat_every: None,
            own_heartbeat: None,
            last_sent: now,
            last_received: now,
            sent_open: false,
            user: None,
            external: None,
            sasl_challenged: false,
            mechanism: None,
            frames_in: 0,
            frames_out: 0,
        }
    }

    /// Client: log in with `mechanism` only (PLAIN, ANONYMOUS or EXTERNAL),
    /// failing clearly if the server does not offer it.
    pub fn use_mechanism(&mut self, mechanism: &str) {
        self.mechanism = Some(mechanism.to_ascii_uppercase());
    }

    /// Server: the transport vouches for the client as `identity` (a verified
    /// TLS client certificate): SASL EXTERNAL is offered, first, and logs
    /// the client in as it. Set before the client's SASL header is read.
    pub fn set_external_identity(&mut self, identity: String) {
        self.external = Some(identity);
    }

    /// Sends a heartbeat at least every `every`, whatever the peer asked for
    /// (broker links use `link-heartbeat-interval`).
    pub fn set_heartbeat(&mut self, every: Duration) {
        let every = every.max(MIN_HEARTBEAT);
        self.own_heartbeat = Some(every);
        self.heartbeat_every = Some(self.heartbeat_every.map_or(every, |h| h.min(every)));
    }

    /// Bytes to write to the socket; the caller takes them (`split()`).
    /// The bytes to write; the caller takes all of them (`split`).
    pub fn output(&mut self) -> &mut BytesMut {
        if let Some(allowed) = self.sealed {
            self.out.truncate(allowed);
            self.sealed = Some(0);
        }
        &mut self.out
    }

    pub fn has_output(&self) -> bool {
        self.out.len().min(self.sealed.unwrap_or(usize::MAX)) > 0
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The authenticated user, if SASL ran.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// True once the connection is over; flush output, then drop the socket.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// True after we sent close and before the peer answered.
    pub fn is_closing(&self) -> bool {
        self.phase == Phase::Closing
    }

    /// True when frames may be exchanged (open sent and not closing).
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Frames read from and written to the peer.
    pub fn frame_counts(&self) -> (u64, u64) {
        (self.frames_in, self.frames_out)
    }

    /// The peer's max-frame-size.
    pub fn remote_max_frame_size(&self) -> u32 {
        self.remote_max_frame
    }

    // -----------------------------------------------------------------------
    // Input

    /// Consumes every complete unit (header or frame) at the front of `buf`.
    pub fn input(&mut self, buf: &mut BytesMut, now: Instant) {
        if !buf.is_empty() {
            self.last_received = now;
        }
        while self.phase != Phase::Closed && !buf.is_empty() {
            let progressed = match self.phase {
                Phase::Header | Phase::AmqpHeader => self.read_header(buf),
                Phase::Sasl => self.read_sasl(buf),
                Phase::Open | Phase::Closing => self.read_frame(buf),
                Phase::Closed => false,
            };
            if !progressed {
                break;
            }
        }
    }

    /// The peer closed the socket.
    pub fn input_eof(&mut self) {
        if self.phase != Phase::Closed {
            let by_peer = self.phase != Phase::Closing;
            self.phase = Phase::Closed;
            self.drop_all_links();
            self.events.push_back(Event::Closed {
                error: if by_peer {
                    Some(ErrorCondition::new(
                        condition::CONNECTION_FORCED,
                        "socket closed without close frame",
                    ))
                } else {
                    None
                },
                by_peer,
            });
        }
    }

    fn read_header(&mut self, buf: &mut BytesMut) -> bool {
        if buf.len() < 8 {
            // A peer that sends something that can never be a header is dropped early.
            if !SASL_HEADER.starts_with(&buf[..]) && !AMQP_HEADER.starts_with(&buf[..]) {
                let got = buf[..].to_vec();
                self.fail_header(&got);
            }
            return false;
        }
        let header: [u8; 8] = buf.split_to(8)[..].try_into().unwrap_or([0; 8]);
        if self.server {
            self.server_header(header)
        } else {
            self.client_header(header)
        }
    }

    /// Spec 2.2: on an unsupported header, answer with the one we support, then
    /// close, saying what the peer seems to have meant.
    fn fail_header(&mut self, got: &[u8]) {
        let ours = if self.server_requires_sasl() {
            SASL_HEADER
        } else {
            AMQP_HEADER
        };
        self.out.put_slice(&ours);
        self.phase = Phase::Closed;
        self.events.push_back(Event::Closed {
            error: Some(ErrorCondition::new(
                condition::DECODE_ERROR,
                bad_header(got),
            )),
            by_peer: false,
        });
    }

    fn server_requires_sasl(&self) -> bool {
        matches!(self.cfg.sasl, Sasl::Server { require: true, .. })
    }

    fn server_header(&mut self, header: [u8; 8]) -> bool {
        let offers_sasl =
            matches!(&self.cfg.sasl, Sasl::Server { mechanisms, .. } if !mechanisms.is_empty());
        if header == SASL_HEADER && self.phase == Phase::Header && offers_sasl {
            self.out.put_slice(&SASL_HEADER);
            if let Sasl::Server { mechanisms, .. } = &self.cfg.sasl {
                let mut offered = mechanisms.clone();
                if self.external.is_some() {
                    offered.insert(0, EXTERNAL.to_owned());
                }
                write_sasl_frame(&mut self.out, &SaslFrame::Mechanisms(offered));
            }
            self.phase = Phase::Sasl;
            true
        } else if header == AMQP_HEADER
            && (self.phase == Phase::AmqpHeader || !self.server_requires_sasl())
        {
            if self.phase == Phase::Header {
                self.events.push_back(Event::Authenticated { user: None });
            }
            self.out.put_slice(&AMQP_HEADER);
            self.phase = Phase::Open;
            true
        } else {
            self.fail_header(&header);
            false
        }
    }

    fn client_header(&mut self, header: [u8; 8]) -> bool {
        if header == SASL_HEADER && self.phase == Phase::Header {
            self.phase = Phase::Sasl;
            true
        } else if header == AMQP_HEADER {
            self.phase = Phase::Open;
            true
        } else {
            self.phase = Phase::Closed;
            self.events.push_back(Event::Closed {
                error: Some(ErrorCondition::new(
                    condition::DECODE_ERROR,
                    "peer answered with an unsupported protocol header",
                )),
                by_peer: true,
            });
            false
        }
    }

    fn read_sasl(&mut self, buf: &mut BytesMut) -> bool {
        let raw = match split_frame(buf, self.cfg.max_frame_size.max(MIN_MAX_FRAME_SIZE)) {
            Ok(Some(raw)) => raw,
            Ok(None) => return false,
            Err(e) => {
                self.phase = Phase::Closed;
                self.events.push_back(Event::Closed {
                    error: Some(ErrorCondition::new(condition::FRAMING_ERROR, e.to_string())),
                    by_peer: false,
                });
                return false;
            }
        };
        let frame = match decode_sasl(raw) {
            Ok(f) => f,
            Err(e) => {
                self.phase = Phase::Closed;
                self.events.push_back(Event::Closed {
                    error: Some(ErrorCondition::new(
                        condition::DECODE_ERROR,
                        format!("bad SASL frame: {e}"),
                    )),
                    by_peer: false,
                });
                return false;
            }
        };
        if self.server {
            self.server_sasl(frame)
        } else {
            self.client_sasl(frame)
        }
    }

    fn server_sasl(&mut self, frame: SaslFrame) -> bool {
        let Sasl::Server {
            mechanisms,
            authenticator,
            ..
        } = &mut self.cfg.sasl
        else {
            return false;
        };
        let step = match (frame, self.sasl_challenged) {
            (
                SaslFrame::Init {
                    mechanism,
                    initial_response,
                    ..
                },
                false,
            ) => {
                if mechanism == EXTERNAL {
                    return match self.external.clone() {
                        Some(user) => self.sasl_succeeded(user, None),
                        None => {
                            self.sasl_failed(1, "EXTERNAL needs a TLS client certificate");
                            false
                        }
                    };
                }
                if !mechanisms.contains(&mechanism) {
                    // Logged through the error's display, which escapes it;
                    // cut here so the client is not sent back a flood.
                    let name: String = mechanism.chars().take(crate::shown::LIMIT).collect();
                    self.sasl_failed(1, &format!("mechanism {name} not offered"));
                    return false;
                }
                authenticator.start(&mechanism, &initial_response.unwrap_or_default())
            }
            (SaslFrame::Response(response), true) => authenticator.respond(&response),
            (_, challenged) => {
                let expected = if challenged {
                    "expected sasl-response"
                } else {
                    "expected sasl-init"
                };
                self.sasl_failed(2, expected);
                return false;
            }
        };
        match step {
            SaslStep::Challenge(challenge) => {
                self.sasl_challenged = true;
                write_sasl_frame(&mut self.out, &SaslFrame::Challenge(challenge));
                true
            }
            SaslStep::Done { user, additional } => self.sasl_succeeded(user, additional),
            SaslStep::Refused(why) => {
                self.sasl_failed(1, &why);
                false
            }
        }
    }

    fn sasl_succeeded(&mut self, user: String, additional: Option<Bytes>) -> bool {
        write_sasl_frame(
            &mut self.out,
            &SaslFrame::Outcome {
                code: 0,
                additional_data: additional,
            },
        );
        self.user = Some(user.clone());
        self.events
            .push_back(Event::Authenticated { user: Some(user) });
        self.phase = Phase::AmqpHeader;
        true
    }

    fn sasl_failed(&mut self, code: u8, why: &str) {
        write_sasl_frame(
            &mut self.out,
            &SaslFrame::Outcome {
                code,
                additional_data: None,
            },
        );
        self.phase = Phase::Closed;
        self.events.push_back(Event::Closed {
            error: Some(ErrorCondition::new(condition::UNAUTHORIZED_ACCESS, why)),
            by_peer: false,
        });
    }

    fn client_sasl(&mut self, frame: SaslFrame) -> bool {
        let Sasl::Client { credentials, .. } = &self.cfg.sasl else {
            return false;
        };
        match frame {
            SaslFrame::Mechanisms(offered) => {
                let chosen =
                    choose_mechanism(self.mechanism.as_deref(), credentials.as_ref(), &offered);
                let (mechanism, response) = match chosen {
                    Ok(pair) => pair,
                    Err(why) => {
                        self.phase = Phase::Closed;
                        self.events.push_back(Event::Closed {
                            error: Some(ErrorCondition::new(condition::UNAUTHORIZED_ACCESS, why)),
                            by_peer: false,
                        });
                        return false;
                    }
                };
                write_sasl_frame(
                    &mut self.out,
                    &SaslFrame::Init {
                        mechanism: mechanism.into(),
                        initial_response: Some(response),
                        hostname: self.cfg.hostname.clone(),
                    },
                );
                true
            }
            SaslFrame::Outcome { code: 0, .. } => {
                self.out.put_slice(&AMQP_HEADER);
                self.send_open();
                self.phase = Phase::AmqpHeader;
                true
            }
            SaslFrame::Outcome { code, .. } => {
                self.phase = Phase::Closed;
                self.events.push_back(Event::Closed {
                    error: Some(ErrorCondition::new(
                        condition::UNAUTHORIZED_ACCESS,
                        format!("SASL authentication failed (outcome code {code})"),
                    )),
                    by_peer: true,
                });
                false
            }
            _ => true,
        }
    }

    fn read_frame(&mut self, buf: &mut BytesMut) -> bool {
        let raw = match split_frame(buf, self.cfg.max_frame_size) {
            Ok(Some(raw)) => raw,
            Ok(None) => return false,
            Err(e) => {
                self.close_with(ErrorCondition::new(condition::FRAMING_ERROR, e.to_string()));
                self.phase = Phase::Closed;
                return false;
            }
        };
        self.frames_in += 1;
        if raw.frame_type != FRAME_AMQP {
            self.close_with(ErrorCondition::new(
                condition::FRAMING_ERROR,
                format!("unexpected frame type {} after negotiation", raw.frame_type),
            ));
            return false;
        }
        match decode_amqp(raw) {
            Ok(frame::Frame { body: None, .. }) => true,
            Ok(frame::Frame {
                channel,
                body: Some(perf),
                payload,
            }) => {
                if self.phase == Phase::Closing && !matches!(perf, Performative::Close(_)) {
                    return true; // spec 2.4.3: ignore everything until the close
                }
                if let Err(e) = self.handle(channel, perf, payload) {
                    self.close_with(e);
                }
                true
            }
            Err(e) => {
                self.close_with(ErrorCondition::new(condition::DECODE_ERROR, e.to_string()));
                true
            }
        }
    }

    fn handle(
        &mut self,
        channel: u16,
        perf: Performative,
        payload: Bytes,
    ) -> Result<(), ErrorCondition> {
        match perf {
            Performative::Open(open) => self.on_open(open),
            Performative::Close(close) => {
                self.on_close(close);
                Ok(())
            }
            Performative::Begin(begin) => self.on_begin(channel, begin),
            Performative::End(end) => self.on_end(channel, end),
            Performative::Attach(attach) => self.on_attach(channel, attach),
            Performative::Detach(detach) => self.on_detach(channel, detach),
            Performative::Flow(flow) => self.on_flow(channel, flow),
            Performative::Transfer(t) => self.on_transfer(channel, t, payload),
            Performative::Disposition(d) => {
                let local = self.local_channel(channel)?;
                self.events.push_back(Event::Disposition {
                    channel: local,
                    disposition: d,
                });
                Ok(())
            }
        }
    }

    fn on_open(&mut self, open: Open) -> Result<(), ErrorCondition> {
        self.remote_max_frame = open
            .max_frame_size
            .unwrap_or(u32::MAX)
            .max(MIN_MAX_FRAME_SIZE);
        // Half the peer's idle timeout, but never so often that a peer asking for
        // 1 ms could make us spin writing heartbeats.
        self.heartbeat_every = open
            .idle_timeout
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(u64::from(ms) / 2).max(MIN_HEARTBEAT));
        if let Some(own) = self.own_heartbeat {
            self.heartbeat_every = Some(self.heartbeat_every.map_or(own, |h| h.min(own)));
        }
        if self.server {
            self.send_open();
        }
        self.events.push_back(Event::Opened(open));
        Ok(())
    }

    fn send_open(&mut self) {
        let open = Open {
            container_id: self.cfg.container_id.clone(),
            hostname: if self.server {
                None
            } else {
                self.cfg.hostname.clone()
            },
            max_frame_size: Some(self.cfg.max_frame_size),
            channel_max: Some(self.cfg.channel_max),
            idle_timeout: self
                .cfg
                .idle_timeout
                .map(|d| d.as_millis().min(u128::from(u32::MAX)) as u32),
            properties: self.cfg.properties.clone(),
            ..Default::default()
        };
        self.frames_out += 1;
        write_frame(&mut self.out, 0, &Performative::Open(open));
        self.sent_open = true;
    }

    fn on_close(&mut self, close: Close) {
        if self.phase != Phase::Closing {
            if !self.sent_open {
                self.send_open();
            }
            self.frames_out += 1;
            write_frame(
                &mut self.out,
                0,
                &Performative::Close(Close { error: None }),
            );
            self.sealed = Some(self.out.len());
        }
        let by_peer = self.phase != Phase::Closing;
        self.phase = Phase::Closed;
        self.drop_all_links();
        self.events.push_back(Event::Closed {
            error: close.error,
            by_peer,
        });
    }

    fn local_channel(&self, remote: u16) -> Result<u16, ErrorCondition> {
        self.remote_channels.get(&remote).copied().ok_or_else(|| {
            ErrorCondition::new(
                condition::FRAMING_ERROR,
                format!("frame on channel {remote}, which has no session"),
            )
        })
    }

    fn on_begin(&mut self, channel: u16, begin: Begin) -> Result<(), ErrorCondition> {
        if self.remote_channels.contains_key(&channel) {
            return Err(ErrorCondition::new(
                condition::FRAMING_ERROR,
                format!("begin on channel {channel}, which is in use"),
            ));
        }
        let local = match begin.remote_channel {
            // The peer answers a begin of ours.
            Some(ours) => match self.sessions.get_mut(&ours) {
                Some(s) if s.remote_channel.is_none() => {
                    s.remote_channel = Some(channel);
                    s.remote_incoming_window = begin.incoming_window;
                    s.next_incoming_id = begin.next_outgoing_id;
                    ours
                }
                _ => {
                    return Err(ErrorCondition::new(
                        condition::FRAMING_ERROR,
                        format!("begin answers channel {ours}, which we did not begin"),
                    ))
                }
            },
            None => {
                if self.sessions.len() > usize::from(self.cfg.channel_max) {
                    return Err(ErrorCondition::new(
                        condition::FRAMING_ERROR,
                        "channel-max exceeded",
                    ));
                }
                let local = (0..=u16::MAX)
                    .find(|c| !self.sessions.contains_key(c))
                    .unwrap_or(0);
                let mut s = Session::new();
                s.remote_channel = Some(channel);
                s.remote_incoming_window = begin.incoming_window;
                s.next_incoming_id = begin.next_outgoing_id;
                self.sessions.insert(local, s);
                self.frames_out += 1;
                write_frame(
                    &mut self.out,
                    local,
                    &Performative::Begin(Begin {
                        remote_channel: Some(channel),
                        next_outgoing_id: 0,
                        incoming_window: INCOMING_WINDOW,
                        outgoing_window: INCOMING_WINDOW,
                        handle_max: Some(u32::MAX),
                        properties: None,
                    }),
                );
                local
            }
        };
        self.remote_channels.insert(channel, local);
        self.events.push_back(Event::Begun { channel: local });
        Ok(())
    }

    fn on_end(&mut self, channel: u16, end: End) -> Result<(), ErrorCondition> {
        let local = self.local_channel(channel)?;
        self.remote_channels.remove(&channel);
        if let Some(session) = self.sessions.remove(&local) {
            for (handle, link) in session.links {
                if !link.detached {
                    self.events.push_back(Event::Detached {
                        link: LinkKey {
                            channel: local,
                            handle,
                        },
                        closed: false,
                        error: None,
                    });
                }
            }
            if !session.ended_local {
                self.frames_out += 1;
                write_frame(
                    &mut self.out,
                    local,
                    &Performative::End(End { error: None }),
                );
            }
        }
        self.events.push_back(Event::Ended {
            channel: local,
            error: end.error,
        });
        Ok(())
    }

    fn on_attach(&mut self, channel: u16, attach: Attach) -> Result<(), ErrorCondition> {
        let server = self.server;
        let (local, s) = session_of(&mut self.sessions, &self.remote_channels, channel)?;
        if s.remote_handles.contains_key(&attach.handle) {
            return Err(ErrorCondition::new(
                condition::HANDLE_IN_USE,
                format!("handle {} is already attached", attach.handle),
            ));
        }
        // A client's own attach being answered is found by name; otherwise the peer
        // opens a new link and we allocate a handle for it.
        let our_role = match attach.role {
            Role::Sender => Role::Receiver,
            Role::Receiver => Role::Sender,
        };
        let existing = s
            .links
            .iter()
            .find(|(_, l)| l.remote_handle.is_none() && l.role == our_role && l.name == attach.name)
            .map(|(h, _)| *h)
            .filter(|_| !server);
        let handle = match existing {
            Some(h) => h,
            None => {
                let h = s.next_handle;
                s.next_handle += 1;
                s.links.insert(
                    h,
                    LinkState {
                        name: attach.name.clone(),
                        role: our_role,
                        remote_handle: None,
                        delivery_count: 0,
                        credit: 0,
                        drain: false,
                        partial: None,
                        detached: false,
                    },
                );
                h
            }
        };
        s.remote_handles.insert(attach.handle, handle);
        if let Some(link) = s.links.get_mut(&handle) {
            link.remote_handle = Some(attach.handle);
            if our_role == Role::Receiver {
                link.delivery_count = attach.initial_delivery_count.unwrap_or(0);
            }
        }
        self.events.push_back(Event::Attached {
            link: LinkKey {
                channel: local,
                handle,
            },
            attach,
        });
        Ok(())
    }

    fn on_detach(&mut self, channel: u16, detach: Detach) -> Result<(), ErrorCondition> {
        let (local, s) = session_of(&mut self.sessions, &self.remote_channels, channel)?;
        let Some(handle) = s.remote_handles.remove(&detach.handle) else {
            return Err(ErrorCondition::new(
                condition::UNATTACHED_HANDLE,
                format!("detach of handle {}, which is not attached", detach.handle),
            ));
        };
        let already_detached = s.links.remove(&handle).map(|l| l.detached).unwrap_or(true);
        if !already_detached {
            self.frames_out += 1;
            write_frame(
                &mut self.out,
                local,
                &Performative::Detach(Detach {
                    handle,
                    closed: detach.closed,
                    error: None,
                }),
            );
        }
        self.events.push_back(Event::Detached {
            link: LinkKey {
                channel: local,
                handle,
            },
            closed: detach.closed,
            error: detach.error,
        });
        Ok(())
    }

    fn on_flow(&mut self, channel: u16, flow: Flow) -> Result<(), ErrorCondition> {
        let (local, s) = session_of(&mut self.sessions, &self.remote_channels, channel)?;
        // Spec 2.5.6: the peer's window for our transfers.
        let next_incoming = flow.next_incoming_id.unwrap_or(0);
        s.remote_incoming_window = next_incoming
            .wrapping_add(flow.incoming_window)
            .wrapping_sub(s.next_outgoing_id);
        let mut echo = flow.echo;
        if let Some(remote_handle) = flow.handle {
            let handle = *s.remote_handles.get(&remote_handle).ok_or_else(|| {
                ErrorCondition::new(
                    condition::UNATTACHED_HANDLE,
                    format!("flow for handle {remote_handle}, which is not attached"),
                )
            })?;
            if let Some(link) = s.links.get_mut(&handle) {
                match link.role {
                    Role::Sender => {
                        let their_count = flow.delivery_count.unwrap_or(link.delivery_count);
                        let credit = flow.link_credit.unwrap_or(0);
                        link.credit = their_count
                            .wrapping_add(credit)
                            .wrapping_sub(link.delivery_count);
                        // A credit wrapped "negative" means the peer revoked it.
                        if link.credit > i32::MAX as u32 {
                            link.credit = 0;
                        }
                        link.drain = flow.drain;
                    }
                    Role::Receiver => {
                        // The sender advanced its delivery count (e.g. drained).
                        if let Some(count) = flow.delivery_count {
                            let advanced = count.wrapping_sub(link.delivery_count);
                            if advanced <= link.credit {
                                link.credit -= advanced;
                                link.delivery_count = count;
                            }
                        }
                        echo = false;
                    }
                }
                self.events.push_back(Event::Credit {
                    link: LinkKey {
                        channel: local,
                        handle,
                    },
                    credit: link.credit,
                    drain: link.drain,
                });
            }
        }
        self.unblock(local);
        if echo {
            self.send_session_flow(local, None);
        }
        Ok(())
    }

    fn on_transfer(
        &mut self,
        channel: u16,
        t: Transfer,
        payload: Bytes,
    ) -> Result<(), ErrorCondition> {
        let max_message = self.cfg.max_message_size;
        let (local, s) = session_of(&mut self.sessions, &self.remote_channels, channel)?;
        s.next_incoming_id = s.next_incoming_id.wrapping_add(1);
        let handle = *s.remote_handles.get(&t.handle).ok_or_else(|| {
            ErrorCondition::new(
                condition::UNATTACHED_HANDLE,
                format!("transfer on handle {}, which is not attached", t.handle),
            )
        })?;
        let Some(link) = s.links.get_mut(&handle) else {
            return Ok(());
        };
        if link.role != Role::Receiver {
            return Err(ErrorCondition::new(
                condition::FRAMING_ERROR,
                "transfer on a link where we are the sender",
            ));
        }
        let key = LinkKey {
            channel: local,
            handle,
        };
        let complete = match link.partial.take() {
            None => {
                let (Some(delivery_id), Some(tag)) = (t.delivery_id, t.delivery_tag.clone()) else {
                    return Err(ErrorCondition::new(
                        condition::INVALID_FIELD,
                        "first transfer of a delivery lacks delivery-id or delivery-tag",
                    ));
                };
                if link.credit == 0 {
                    let error = ErrorCondition::new(
                        condition::TRANSFER_LIMIT_EXCEEDED,
                        "transfer without link credit",
                    );
                    self.detach_with(key, error);
                    return Ok(());
                }
                link.credit -= 1;
                link.delivery_count = link.delivery_count.wrapping_add(1);
                let settled = t.settled.unwrap_or(false);
                if t.more {
                    let mut buf = BytesMut::with_capacity(payload.len() * 2);
                    buf.put_slice(&payload);
                    link.partial = Some(Partial {
                        delivery_id,
                        tag,
                        settled,
                        oversize: false,
                        buf,
                    });
                    None
                } else {
                    Some((delivery_id, tag, settled, payload))
                }
            }
            Some(mut p) => {
                p.settled |= t.settled.unwrap_or(false);
                if !p.oversize {
                    if p.buf.len() + payload.len() > max_message {
                        p.oversize = true;
                        p.buf = BytesMut::new();
                    } else {
                        p.buf.put_slice(&payload);
                    }
                }
                if t.more {
                    link.partial = Some(p);
                    None
                } else if p.oversize {
                    let error = ErrorCondition::new(
                        condition::RESOURCE_LIMIT_EXCEEDED,
                        format!("message larger than the {max_message}-byte limit"),
                    );
                    self.detach_with(key, error);
                    return Ok(());
                } else {
                    Some((p.delivery_id, p.tag, p.settled, p.buf.freeze()))
                }
            }
        };
        if t.aborted {
            // An aborted delivery is discarded (spec 2.6.14).
            return Ok(());
        }
        if let Some((delivery_id, tag, settled, payload)) = complete {
            self.events.push_back(Event::Transfer {
                link: key,
                delivery_id,
                tag,
                settled,
                payload,
            });
        }
        Ok(())
    }

    fn drop_all_links(&mut self) {
        let mut keys: Vec<LinkKey> = Vec::new();
        for (ch, s) in &self.sessions {
            for (h, l) in &s.links {
                if !l.detached {
                    keys.push(LinkKey {
                        channel: *ch,
                        handle: *h,
                    });
                }
            }
        }
        keys.sort();
        for link in keys {
            self.events.push_back(Event::Detached {
                link,
                closed: false,
                error: None,
            });
        }
        self.sessions.clear();
        self.remote_channels.clear();
    }

    // -----------------------------------------------------------------------
    // Commands

    /// Drops the connection without another frame: anything not yet written
    /// (e.g. our open) is discarded. HA backups refuse ordinary clients this way,
    /// because Qpid Proton restarts its URL list from the top once it has seen a
    /// broker's open, and would never reach the primary.
    pub fn abort(&mut self, why: ErrorCondition) {
        if self.phase == Phase::Closed {
            return;
        }
        self.out.clear();
        self.sealed = Some(0);
        self.phase = Phase::Closed;
        self.drop_all_links();
        self.events.push_back(Event::Closed {
            error: Some(why),
            by_peer: false,
        });
    }

    /// Closes the connection with an error (or none); the peer's close finishes it.
    pub fn close_with(&mut self, error: ErrorCondition) {
        self.close(Some(error));
    }

    pub fn close(&mut self, error: Option<ErrorCondition>) {
        if matches!(self.phase, Phase::Closing | Phase::Closed) {
            return;
        }
        if !self.sent_open {
            self.send_open();
        }
        self.frames_out += 1;
        write_frame(
            &mut self.out,
            0,
            &Performative::Close(Close {
                error: error.clone(),
            }),
        );
        self.sealed = Some(self.out.len());
        self.phase = Phase::Closing;
        self.drop_all_links();
        self.events.push_back(Event::Closed {
            error,
            by_peer: false,
        });
    }

    /// Client: begins a session; `Event::Begun` follows when the peer answers.
    pub fn begin(&mut self) -> u16 {
        let local = (0..=u16::MAX)
            .find(|c| !self.sessions.contains_key(c))
            .unwrap_or(0);
        self.sessions.insert(local, Session::new());
        self.frames_out += 1;
        write_frame(
            &mut self.out,
            local,
            &Performative::Begin(Begin {
                remote_channel: None,
                next_outgoing_id: 0,
                incoming_window: INCOMING_WINDOW,
                outgoing_window: INCOMING_WINDOW,
                handle_max: Some(u32::MAX),
                properties: None,
            }),
        );
        local
    }

    /// Client: attaches a link described by `attach` (its handle and initial
    /// delivery count are filled in here); `Event::Attached` follows with the
    /// peer's answer.
    pub fn attach(&mut self, channel: u16, mut attach: Attach) -> Option<LinkKey> {
        let s = self.sessions.get_mut(&channel)?;
        let handle = s.next_handle;
        s.next_handle += 1;
        s.links.insert(
            handle,
            LinkState {
                name: attach.name.clone(),
                role: attach.role,
                remote_handle: None,
                delivery_count: 0,
                credit: 0,
                drain: false,
                partial: None,
                detached: false,
            },
        );
        attach.handle = handle;
        attach.initial_delivery_count = (attach.role == Role::Sender).then_some(0);
        self.frames_out += 1;
        write_frame(&mut self.out, channel, &Performative::Attach(attach));
        Some(LinkKey { channel, handle })
    }

    /// Server: accepts the peer's attach, echoing its termini (adjusted).
    pub fn accept_attach(
        &mut self,
        link: LinkKey,
        remote: &Attach,
        source: Option<Source>,
        target: Option<Target>,
        properties: Option<Value>,
    ) {
        let Some(s) = self.sessions.get(&link.channel) else {
            return;
        };
        let Some(state) = s.links.get(&link.handle) else {
            return;
        };
        let attach = Attach {
            handle: link.handle,
            snd_settle_mode: remote.snd_settle_mode,
            rcv_settle_mode: Some(0),
            initial_delivery_count: (state.role == Role::Sender).then_some(0),
            properties,
            ..Attach::new(remote.name.clone(), state.role, source, target)
        };
        self.frames_out += 1;
        write_frame(&mut self.out, link.channel, &Performative::Attach(attach));
    }

    /// Server: refuses the peer's attach (spec 2.6.3: attach with a null terminus,
    /// then detach with the error).
    pub fn refuse_attach(&mut self, link: LinkKey, remote: &Attach, error: ErrorCondition) {
        let role = match remote.role {
            Role::Sender => Role::Receiver,
            Role::Receiver => Role::Sender,
        };
        let attach = Attach {
            handle: link.handle,
            initial_delivery_count: (role == Role::Sender).then_some(0),
            ..Attach::new(remote.name.clone(), role, None, None)
        };
        self.frames_out += 1;
        write_frame(&mut self.out, link.channel, &Performative::Attach(attach));
        self.detach_with(link, error);
    }

    /// Detaches (closes) a link from our side with an error.
    pub fn detach_with(&mut self, link: LinkKey, error: ErrorCondition) {
        self.detach(link, true, Some(error));
    }

    pub fn detach(&mut self, link: LinkKey, closed: bool, error: Option<ErrorCondition>) {
        let Some(s) = self.sessions.get_mut(&link.channel) else {
            return;
        };
        let Some(state) = s.links.get_mut(&link.handle) else {
            return;
        };
        if state.detached {
            return;
        }
        state.detached = true;
        self.frames_out += 1;
        write_frame(
            &mut self.out,
            link.channel,
            &Performative::Detach(Detach {
                handle: link.handle,
                closed,
                error,
            }),
        );
    }

    /// Receiver: sets the credit the peer may use to `credit` (absolute).
    pub fn grant_credit(&mut self, link: LinkKey, credit: u32, drain: bool) {
        let Some(s) = self.sessions.get_mut(&link.channel) else {
            return;
        };
        let Some(state) = s.links.get_mut(&link.handle) else {
            return;
        };
        state.credit = credit;
        let flow_link = (link.handle, state.delivery_count, credit, drain);
        self.send_session_flow(link.channel, Some(flow_link));
    }

    /// Credit available on a link (sender: how many we may send).
    pub fn credit(&self, link: LinkKey) -> u32 {
        self.sessions
            .get(&link.channel)
            .and_then(|s| s.links.get(&link.handle))
            .map(|l| l.credit)
            .unwrap_or(0)
    }

    /// Whether the link's peer asked us to drain.
    pub fn draining(&self, link: LinkKey) -> bool {
        self.sessions
            .get(&link.channel)
            .and_then(|s| s.links.get(&link.handle))
            .map(|l| l.drain)
            .unwrap_or(false)
    }

    /// Sender: we have nothing more to send; if the peer asked to drain, use up
    /// the remaining credit and tell it so.
    pub fn drained(&mut self, link: LinkKey) {
        let Some(s) = self.sessions.get_mut(&link.channel) else {
            return;
        };
        let Some(state) = s.links.get_mut(&link.handle) else {
            return;
        };
        if !state.drain {
            return;
        }
        state.delivery_count = state.delivery_count.wrapping_add(state.credit);
        state.credit = 0;
        state.drain = false;
        let flow_link = (link.handle, state.delivery_count, 0, true);
        self.send_session_flow(link.channel, Some(flow_link));
    }

    fn send_session_flow(&mut self, channel: u16, link: Option<(u32, u32, u32, bool)>) {
        let Some(s) = self.sessions.get(&channel) else {
            return;
        };
        let flow = Flow {
            next_incoming_id: Some(s.next_incoming_id),
            incoming_window: INCOMING_WINDOW,
            next_outgoing_id: s.next_outgoing_id,
            outgoing_window: INCOMING_WINDOW,
            handle: link.map(|l| l.0),
            delivery_count: link.map(|l| l.1),
            link_credit: link.map(|l| l.2),
            available: None,
            drain: link.map(|l| l.3).unwrap_or(false),
            echo: false,
        };
        self.frames_out += 1;
        write_frame(&mut self.out, channel, &Performative::Flow(flow));
    }

    /// Sender: transfers one message; returns its delivery id, or `None` without
    /// credit (or on an unknown link). Large messages are split over frames.
    pub fn send(
        &mut self,
        link: LinkKey,
        tag: &[u8],
        payload: &[u8],
        settled: bool,
    ) -> Option<u32> {
        self.send_parts(link, tag, &[payload], settled)
    }

    /// Like [`send`](Self::send), for a payload held in several pieces (a header
    /// and a shared message body, say): sent as their concatenation, without
    /// first joining them.
    pub fn send_parts(
        &mut self,
        link: LinkKey,
        tag: &[u8],
        parts: &[&[u8]],
        settled: bool,
    ) -> Option<u32> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let max_frame = self
            .remote_max_frame
            .min(self.cfg.max_frame_size.max(MIN_MAX_FRAME_SIZE)) as usize;
        let s = self.sessions.get_mut(&link.channel)?;
        let state = s.links.get_mut(&link.handle)?;
        if state.role != Role::Sender || state.credit == 0 || state.detached {
            return None;
        }
        state.credit -= 1;
        state.delivery_count = state.delivery_count.wrapping_add(1);
        let delivery_id = s.next_delivery_id;
        s.next_delivery_id = s.next_delivery_id.wrapping_add(1);
        let mut offset = 0;
        let mut first = true;
        loop {
            let mut frame = BytesMut::new();
            let out: &mut BytesMut = if s.blocked.is_empty() && s.remote_incoming_window > 0 {
                &mut self.out
            } else {
                &mut frame
            };
            self.frames_out += 1;
            let start = begin_frame(out, FRAME_AMQP, link.channel);
            let perf_start = out.len();
            let mut transfer = Performative::Transfer(Transfer {
                handle: link.handle,
                delivery_id: first.then_some(delivery_id),
                delivery_tag: first.then(|| Bytes::copy_from_slice(tag)),
                message_format: first.then_some(0),
                settled: first.then_some(settled),
                more: false,
                ..Default::default()
            });
            // Encode as the last frame; when the rest does not fit, encode
            // again with `more` set (the longer encoding) and fill what fits.
            transfer.encode(out);
            let room = |out: &BytesMut| max_frame.saturating_sub(out.len() - start).max(1);
            let mut more = total - offset > room(out);
            if more {
                out.truncate(perf_start);
                if let Performative::Transfer(t) = &mut transfer {
                    t.more = true;
                }
                transfer.encode(out);
            }
            let chunk = (total - offset).min(room(out));
            more &= offset + chunk < total;
            put_range(out, parts, offset, chunk);
            end_frame(out, start);
            s.next_outgoing_id = s.next_outgoing_id.wrapping_add(1);
            if !frame.is_empty() {
                s.blocked.push_back(frame.freeze());
            } else {
                s.remote_incoming_window = s.remote_incoming_window.saturating_sub(1);
            }
            offset += chunk;
            first = false;
            if !more {
                break;
            }
        }
        Some(delivery_id)
    }

    /// Writes frames that waited for the peer's session window.
    fn unblock(&mut self, channel: u16) {
        let Some(s) = self.sessions.get_mut(&channel) else {
            return;
        };
        while s.remote_incoming_window > 0 {
            let Some(frame) = s.blocked.pop_front() else {
                break;
            };
            self.out.put_slice(&frame);
            s.remote_incoming_window -= 1;
        }
    }

    /// Settles or updates deliveries `first..=last` on a session.
    pub fn disposition(
        &mut self,
        channel: u16,
        role: Role,
        first: u32,
        last: u32,
        settled: bool,
        state: Option<&super::performative::DeliveryState>,
    ) {
        if !self.sessions.contains_key(&channel) {
            return;
        }
        self.frames_out += 1;
        let start = begin_frame(&mut self.out, FRAME_AMQP, channel);
        Performative::Disposition(Disposition {
            role,
            first,
            last: (last != first).then_some(last),
            settled,
            state: state.cloned(),
            batchable: false,
        })
        .encode(&mut self.out);
        end_frame(&mut self.out, start);
    }

    /// Ends a session from our side.
    pub fn end(&mut self, channel: u16, error: Option<ErrorCondition>) {
        if let Some(s) = self.sessions.get_mut(&channel) {
            if !s.ended_local {
                s.ended_local = true;
                self.frames_out += 1;
                write_frame(&mut self.out, channel, &Performative::End(End { error }));
            }
        }
    }

    // -----------------------------------------------------------------------
    // Time

    /// Sends a heartbeat when due and closes an idle peer; returns when to call again.
    pub fn tick(&mut self, now: Instant) -> Option<Instant> {
        if !matches!(self.phase, Phase::Open | Phase::Closing) {
            return None;
        }
        if let Some(limit) = self.cfg.idle_timeout {
            if now.duration_since(self.last_received) > limit {
                self.close_with(ErrorCondition::new(
                    condition::RESOURCE_LIMIT_EXCEEDED,
                    format!(
                        "local-idle-timeout expired: nothing received for {} ms",
                        limit.as_millis()
                    ),
                ));
                self.phase = Phase::Closed;
                return None;
            }
        }
        if let Some(every) = self.heartbeat_every {
            if self.out.is_empty() && now.duration_since(self.last_sent) >= every {
                write_heartbeat(&mut self.out);
            }
        }
        let mut next: Option<Instant> = None;
        if let Some(every) = self.heartbeat_every {
            next = Some(self.last_sent + every);
        }
        if let Some(limit) = self.cfg.idle_timeout {
            let t = self.last_received + limit;
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        next
    }

    /// The application wrote our output to the socket at `now`.
    pub fn wrote(&mut self, now: Instant) {
        self.last_sent = now;
    }
}

/// The session a peer's channel refers to, as (local channel, session).
fn session_of<'a>(
    sessions: &'a mut HashMap<u16, Session>,
    remote_channels: &HashMap<u16, u16>,
    remote_channel: u16,
) -> Result<(u16, &'a mut Session), ErrorCondition> {
    let local = remote_channels
        .get(&remote_channel)
        .copied()
        .ok_or_else(|| {
            ErrorCondition::new(
                condition::FRAMING_ERROR,
                format!("frame on channel {remote_channel}, which has no session"),
            )
        })?;
    let s = sessions
        .get_mut(&local)
        .ok_or_else(|| ErrorCondition::new(condition::FRAMING_ERROR, "session is gone"))?;
    Ok((local, s))
}

impl Session {
    fn new() -> Session {
        Session {
            remote_channel: None,
            next_outgoing_id: 0,
            next_delivery_id: 0,
            remote_incoming_window: 0,
            next_incoming_id: 0,
            links: HashMap::new(),
            remote_handles: HashMap::new(),
            next_handle: 0,
            blocked: VecDeque::new(),
            ended_local: false,
        }
    }
}

/// Appends bytes `offset..offset + len` of the concatenation of `parts`.
/// Why a protocol header was refused, in words an operator can act on.
fn bad_header(got: &[u8]) -> &'static str {
    match got {
        // A TLS record: a handshake (0x16) of TLS 1.x (0x03).
        [0x16, 0x03, ..] | [0x16] => {
            "bad protocol header: a TLS handshake on a plain AMQP port (use the TLS port, ssl-port, or connect without TLS)"
        }
        h if h == AMQP_HEADER => {
            "bad protocol header: AMQP without a SASL layer, and this broker requires a SASL login"
        }
        h if h == SASL_HEADER => "bad protocol header: a SASL layer this broker does not offer here",
        [b'A', b'M', b'Q', b'P', 2, ..] => {
            "bad protocol header: AMQP's TLS upgrade (protocol id 2) is not supported (connect with TLS to the TLS port, ssl-port)"
        }
        // 0-9-1 sends AMQP 0 0 9 1, 0-10 sends AMQP 1 1 0 10.
        [b'A', b'M', b'Q', b'P', 0 | 1, ..] => {
            "bad protocol header: an AMQP version before 1.0 (this broker speaks AMQP 1.0 only)"
        }
        [b'A', b'M', b'Q', b'P', ..] => "bad protocol header: an AMQP header this broker does not know",
        _ => "bad protocol header: not AMQP",
    }
}

fn put_range(out: &mut BytesMut, parts: &[&[u8]], mut offset: usize, mut len: usize) {
    for part in parts {
        if len == 0 {
            break;
        }
        if offset >= part.len() {
            offset -= part.len();
            continue;
        }
        let take = (part.len() - offset).min(len);
        out.put_slice(&part[offset..offset + take]);
        offset = 0;
        len -= take;
    }
}

/// The client's SASL mechanism and initial response: `preferred` (from
/// `ha-mechanism`) if the server offers it, else PLAIN with credentials,
/// EXTERNAL (a TLS client certificate) or ANONYMOUS without; or why none.
fn choose_mechanism(
    preferred: Option<&str>,
    credentials: Option<&(String, String)>,
    offered: &[String],
) -> Result<(&'static str, Bytes), String> {
    let plain = |(user, pass): &(String, String)| {
        let mut r = Vec::with_capacity(user.len() + pass.len() + 2);
        r.push(0);
        r.extend_from_slice(user.as_bytes());
        r.push(0);
        r.extend_from_slice(pass.as_bytes());
        Bytes::from(r)
    };
    let offers = |m: &str| offered.iter().any(|o| o == m);
    let anonymous = || ("ANONYMOUS", Bytes::from_static(b"anonymous"));
    match preferred {
        Some(m) if !offers(m) => Err(format!(
            "the peer does not offer {m} (it offers {offered:?})"
        )),
        Some("PLAIN") => credentials
            .map(|c| ("PLAIN", plain(c)))
            .ok_or_else(|| "PLAIN needs a user name and password".to_string()),
        Some("ANONYMOUS") => Ok(anonymous()),
        Some(m) if m == EXTERNAL => Ok((EXTERNAL, Bytes::new())),
        Some(m) => Err(format!("{m} is not a mechanism this client speaks")),
        None => match credentials {
            Some(c) if offers("PLAIN") => Ok(("PLAIN", plain(c))),
            // Without a password, the identity of our TLS client certificate,
            // when the server offers to take it.
            None if offers(EXTERNAL) => Ok((EXTERNAL, Bytes::new())),
            None if offers("ANONYMOUS") => Ok(anonymous()),
            _ => Err(format!("no usable SASL mechanism among {offered:?}")),
        },
    }
}
