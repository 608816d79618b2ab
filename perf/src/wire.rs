//! One AMQP connection of the harness on a glommio socket: the project's sans-I/O
//! engine ([`Connection`]) driven by a reader task and a writer task, the way the
//! broker's runtime drives its connections.
//!
//! What the connection *does* is a [`Role`] (a producer or a consumer, on the
//! client or the server side): the reader hands it engine events; the writer asks
//! it to queue work ([`Role::fill`]) and writes whatever the engine has to say.
//! [`LinkSetup`] brings either side of a connection to one attached link.

use std::cell::RefCell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use tandem_shards::amqp::codec::Value;
use tandem_shards::amqp::connection::{Connection, ConnectionConfig, Event, LinkKey, Sasl};
use tandem_shards::amqp::performative::{Attach, Role as LinkRole, Source, Target};
use tandem_shards::url::{BrokerUrl, Transport};

/// How long a closing connection waits for the peer's close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Read buffer growth step; one read takes at most this much.
const READ_CHUNK: usize = 64 * 1024;
/// The shortest timed wait of the writer (input wakes it sooner).
const MIN_WAIT: Duration = Duration::from_micros(50);
/// The frame size we offer: large, so a 1 MiB message is one frame.
const MAX_FRAME: u32 = 1024 * 1024;

/// What a role tells the writer after [`Role::fill`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Ask again at this instant, or sooner when input arrives.
    At(Instant),
    /// Finished: close the connection politely.
    Done,
}

/// The behaviour of one connection.
pub trait Role {
    /// An engine event arrived (`now`: when its bytes were read).
    fn on_event(&mut self, conn: &mut Connection, event: Event, now: Instant);
    /// All events of one read were handled: settle, top up credit.
    fn after_input(&mut self, conn: &mut Connection, now: Instant);
    /// The writer's turn: queue sends on the engine and say when to come back.
    fn fill(&mut self, conn: &mut Connection, now: Instant) -> Next;
    /// The socket failed or closed without a close frame.
    fn lost(&mut self, why: String);
}

struct Shared<R> {
    conn: Connection,
    role: R,
    /// Plain, or TLS: the reader feeds it records, the writer takes records
    /// from it.
    transport: tandem_shards::transport::Transport,
}

/// The TLS configuration for `ssl:` addresses (`--ssl-trustfile`), set once.
static TLS: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();

/// The TLS configuration `--ssl-trustfile` set, if any.
pub fn tls() -> Option<std::sync::Arc<rustls::ClientConfig>> {
    TLS.get().cloned()
}

/// Verifies brokers on `ssl:` addresses against the CA in `ca`.
pub fn use_tls(ca: &std::path::Path) -> Result<(), String> {
    let config = tandem_shards::tls::client_config(&tandem_shards::tls::ClientFiles {
        ca: Some(ca.to_owned()),
        ..Default::default()
    })
    .map_err(|e| format!("--ssl-trustfile: {e}"))?;
    let _ = TLS.set(config);
    Ok(())
}

/// Runs `role` on `stream` until it is done and the connection is closed (or
/// lost), then hands the role back with whatever it recorded.
pub async fn drive<R: Role + 'static>(
    stream: TcpStream,
    conn: Connection,
    mut role: R,
    transport: tandem_shards::transport::Transport,
) -> R {
    let _ = stream.set_nodelay(true);
    // The writer gets its own descriptor so a read and a write can be in flight
    // at once without a lock (as the broker's runtime does).
    // SAFETY: dup of a valid open socket; the new fd is owned by the new stream.
    let dup = unsafe { libc::dup(stream.as_raw_fd()) };
    if dup < 0 {
        role.lost(format!("dup: {}", std::io::Error::last_os_error()));
        return role;
    }
    let write_half = unsafe { TcpStream::from_raw_fd(dup) };
    let shared = Rc::new(RefCell::new(Shared {
        conn,
        role,
        transport,
    }));
    let (wake_tx, wake_rx) = local_channel::new_bounded(1);
    let reader = glommio::spawn_local(read_loop(shared.clone(), stream, wake_tx));
    write_loop(&shared, write_half, wake_rx).await;
    reader.await;
    match Rc::try_unwrap(shared) {
        Ok(cell) => cell.into_inner().role,
        Err(_) => unreachable!("the reader task ended and dropped its handle"),
    }
}

async fn read_loop<R: Role>(
    shared: Rc<RefCell<Shared<R>>>,
    mut stream: TcpStream,
    wake: LocalSender<()>,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    // With TLS the socket's bytes are records: read here, then handed to the
    // transport, which adds what they hold to `buf`.
    let tls = matches!(
        shared.borrow().transport,
        tandem_shards::transport::Transport::Tls(_)
    );
    let mut records = BytesMut::new();
    loop {
        let target = if tls { &mut records } else { &mut buf };
        if target.capacity() - target.len() < READ_CHUNK / 8 {
            target.reserve(READ_CHUNK);
        }
        let start = target.len();
        let room = target.capacity() - start;
        target.resize(start + room, 0);
        let read = stream.read(&mut target[start..]).await;
        let now = Instant::now();
        let mut s = shared.borrow_mut();
        let Shared {
            conn,
            role,
            transport,
        } = &mut *s;
        let mut n = match read {
            Ok(n) => n,
            Err(e) => {
                if !conn.is_closed() {
                    role.lost(format!("read: {e}"));
                }
                0
            }
        };
        let target = if tls { &mut records } else { &mut buf };
        target.truncate(start + n);
        if tls && n > 0 {
            transport.read_buffer(&mut buf).extend_from_slice(&records);
            records.clear();
            if let Err(e) = transport.received(&mut buf) {
                role.lost(e);
                n = 0;
            }
        }
        if n == 0 {
            conn.input_eof();
        } else {
            conn.input(&mut buf, now);
        }
        while let Some(ev) = conn.poll_event() {
            role.on_event(conn, ev, now);
        }
        role.after_input(conn, now);
        let over = n == 0 || conn.is_closed();
        drop(s);
        let _ = wake.try_send(());
        if over {
            break;
        }
    }
}

async fn write_loop<R: Role>(
    shared: &Rc<RefCell<Shared<R>>>,
    mut stream: TcpStream,
    wake: LocalReceiver<()>,
) {
    // Double buffering: the engine's output is swapped out and written while the
    // engine fills the other buffer, so no allocation per write.
    let mut out = BytesMut::with_capacity(READ_CHUNK);
    let mut closing_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let mut wait_until = now + Duration::from_millis(100);
        let closed = {
            let mut s = shared.borrow_mut();
            let Shared {
                conn,
                role,
                transport,
            } = &mut *s;
            if !conn.is_closed() {
                match closing_since {
                    None => match role.fill(conn, now) {
                        Next::At(t) => wait_until = wait_until.min(t),
                        Next::Done => {
                            conn.close(None);
                            closing_since = Some(now);
                        }
                    },
                    Some(since) => wait_until = wait_until.min(since + CLOSE_GRACE),
                }
                if let Some(t) = conn.tick(now) {
                    wait_until = wait_until.min(t);
                }
            }
            if conn.has_output() {
                std::mem::swap(conn.output(), &mut out);
            }
            if let tandem_shards::transport::Transport::Tls(_) = transport {
                let records = if out.is_empty() {
                    transport.pending()
                } else {
                    Some(transport.to_send(out.split().freeze()))
                };
                if let Some(records) = records {
                    out.extend_from_slice(&records);
                }
            }
            conn.is_closed()
        };
        if !out.is_empty() {
            if let Err(e) = stream.write_all(&out).await {
                shared.borrow_mut().role.lost(format!("write: {e}"));
                break;
            }
            out.clear();
            shared.borrow_mut().conn.wrote(Instant::now());
            continue;
        }
        if closed || closing_since.is_some_and(|s| now.duration_since(s) >= CLOSE_GRACE) {
            break;
        }
        // Never spin: a task that keeps yielding starves glommio's I/O polling
        // until the preemption timer (100 ms) fires.
        let now = Instant::now();
        let wait = wait_until.saturating_duration_since(now).max(MIN_WAIT);
        futures_lite::future::or(
            async {
                wake.recv().await;
            },
            glommio::timer::sleep(wait),
        )
        .await;
    }
    let _ = stream.flush().await;
    // SAFETY: shutting down our own socket wakes the reader, which then exits.
    unsafe {
        libc::shutdown(stream.as_raw_fd(), libc::SHUT_RDWR);
    }
}

/// Opens a TCP connection to the first address of `url` that answers.
pub async fn connect(
    url: &BrokerUrl,
    timeout: Duration,
) -> Result<(TcpStream, String, tandem_shards::transport::Transport), String> {
    let mut last = String::from("the URL names no address");
    for addr in &url.addrs {
        let target = addr.socket_string();
        let transport = match (addr.transport, TLS.get()) {
            (Transport::Tcp, _) => tandem_shards::transport::Transport::Plain,
            (Transport::Ssl, Some(config)) => {
                match tandem_shards::transport::Transport::tls_client(config, &addr.host) {
                    Ok(t) => t,
                    Err(e) => {
                        last = e;
                        continue;
                    }
                }
            }
            (Transport::Ssl, None) => {
                last = format!("ssl:{target}: TLS needs --ssl-trustfile (the broker's CA)");
                continue;
            }
        };
        let resolved: Option<SocketAddr> = match target.to_socket_addrs() {
            Ok(mut a) => a.next(),
            Err(e) => {
                last = format!("cannot resolve {target}: {e}");
                continue;
            }
        };
        let Some(sock) = resolved else { continue };
        match TcpStream::connect_timeout(sock, timeout).await {
            Ok(s) => return Ok((s, addr.host.clone(), transport)),
            Err(e) => last = format!("cannot connect to {target}: {e}"),
        }
    }
    Err(last)
}

/// The engine settings of a harness client connection.
pub fn client_config(url: &BrokerUrl, host: String, name: &str) -> ConnectionConfig {
    ConnectionConfig {
        container_id: format!("tandem-perf-{}-{name}", std::process::id()),
        max_frame_size: MAX_FRAME,
        channel_max: 16,
        idle_timeout: None,
        properties: Some(Value::Map(vec![(
            Value::symbol("product"),
            Value::string("tandem-perf"),
        )])),
        max_message_size: 256 * 1024 * 1024,
        hostname: Some(host),
        sasl: Sasl::Client {
            credentials: url
                .user
                .clone()
                .map(|u| (u, url.password.clone().unwrap_or_default())),
            skip: false,
        },
    }
}

/// The engine settings of the harness's own server side (the `--null` peers):
/// anyone may log in.
pub fn server_config() -> ConnectionConfig {
    ConnectionConfig {
        container_id: format!("tandem-perf-null-{}", std::process::id()),
        max_frame_size: MAX_FRAME,
        channel_max: 16,
        idle_timeout: None,
        properties: Some(Value::Map(vec![(
            Value::symbol("product"),
            Value::string("tandem-perf-null"),
        )])),
        max_message_size: 256 * 1024 * 1024,
        hostname: None,
        sasl: Sasl::Server {
            mechanisms: vec!["ANONYMOUS".into(), "PLAIN".into()],
            authenticator: Box::new(|_: &str, _: &[u8]| Some("null".into())),
            require: false,
        },
    }
}

/// Where a connection's one link stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Negotiating (open, begin, attach).
    Pending,
    /// Attached: messages may flow.
    Up(LinkKey),
    /// The peer refused or detached the link, or closed the connection.
    Down(String),
}

/// Brings a connection to one attached link: as a client it begins a session and
/// attaches `attach` when the peer's open arrives; as a server it accepts the
/// first link the peer attaches.
pub struct LinkSetup {
    /// Client: the attach to send once the session is up (`None` once sent).
    /// Server: `None`.
    attach: Option<Attach>,
    server: bool,
    pub state: LinkState,
}

/// What a [`LinkSetup`] made of an event. (It carries the engine's `Event`,
/// which is large for the same reason: moved once, boxing would not pay.)
#[allow(clippy::large_enum_variant)]
pub enum Setup {
    /// The link just came up.
    Up(LinkKey),
    /// The link just went down (or never came up), with the reason.
    Down(String),
    /// Nothing for the role to do (negotiation, or not about our link).
    Nothing,
    /// Not a negotiation event: the role handles it.
    Other(Event),
}

impl LinkSetup {
    /// A client attaching a `role` link to `address` (a sender's target or a
    /// receiver's source); `settled` asks for pre-settled deliveries.
    pub fn client(role: LinkRole, address: &str, name: &str, settled: bool) -> LinkSetup {
        let node = Some(address.to_owned());
        let (source, target) = match role {
            LinkRole::Sender => (
                Source::default(),
                Target {
                    address: node,
                    ..Default::default()
                },
            ),
            LinkRole::Receiver => (
                Source {
                    address: node,
                    ..Default::default()
                },
                Target::default(),
            ),
        };
        LinkSetup {
            attach: Some(Attach {
                snd_settle_mode: Some(if settled { 1 } else { 0 }),
                ..Attach::new(
                    format!("tandem-perf-{}-{name}", std::process::id()),
                    role,
                    Some(source),
                    Some(target),
                )
            }),
            server: false,
            state: LinkState::Pending,
        }
    }

    /// The server side: accepts whatever link the peer attaches first.
    pub fn server() -> LinkSetup {
        LinkSetup {
            attach: None,
            server: true,
            state: LinkState::Pending,
        }
    }

    pub fn link(&self) -> Option<LinkKey> {
        match self.state {
            LinkState::Up(l) => Some(l),
            _ => None,
        }
    }

    /// Handles negotiation events; hands the others back.
    pub fn on_event(&mut self, conn: &mut Connection, event: Event) -> Setup {
        match event {
            Event::Opened(_) if !self.server => {
                conn.begin();
                Setup::Nothing
            }
            Event::Begun { channel } if !self.server => {
                if let Some(attach) = self.attach.take() {
                    if conn.attach(channel, attach).is_none() {
                        return self.down("the session ended before the attach".into());
                    }
                }
                Setup::Nothing
            }
            Event::Attached { link, attach } if self.state == LinkState::Pending => {
                if self.server {
                    let (source, target) = (attach.source.clone(), attach.target.clone());
                    conn.accept_attach(link, &attach, source, target, None);
                } else {
                    // A refusal is an attach with a null terminus, then a detach
                    // carrying the reason.
                    let refused = match attach.role {
                        LinkRole::Sender => attach.source.is_none(),
                        LinkRole::Receiver => attach.target.is_none(),
                    };
                    if refused {
                        return Setup::Nothing;
                    }
                }
                self.state = LinkState::Up(link);
                Setup::Up(link)
            }
            Event::Detached { error, .. } => {
                let why = error
                    .map(|e| format!("link detached by the peer: {e}"))
                    .unwrap_or_else(|| "link detached by the peer".into());
                self.down(why)
            }
            Event::Closed { error, by_peer } => {
                let why = match (error, by_peer) {
                    (Some(e), true) => format!("connection closed by the peer: {e}"),
                    (Some(e), false) => format!("connection closed: {e}"),
                    (None, _) => "connection closed".into(),
                };
                self.down(why)
            }
            other => Setup::Other(other),
        }
    }

    fn down(&mut self, why: String) -> Setup {
        if matches!(self.state, LinkState::Down(_)) {
            return Setup::Nothing;
        }
        self.state = LinkState::Down(why.clone());
        Setup::Down(why)
    }
}
