//! A real `tandemd` fed bytes that are not AMQP, or not the AMQP it expects: for
//! each kind of abuse the broker answers as the spec says (a protocol header, or a
//! close frame naming the right error condition) and drops the socket; afterwards
//! the broker is alive and serves both a connection opened before the abuse and a
//! fresh one.
//!
//! Starts its own broker (not `tests/common`) and talks raw TCP, building frames
//! with the codec and reading the broker's replies with the frame splitter.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use tandem_shards::amqp::codec::Value;
use tandem_shards::amqp::frame::{
    begin_frame, decode_amqp, end_frame, split_frame, write_frame, Frame, AMQP_HEADER, FRAME_AMQP,
    FRAME_SASL, SASL_HEADER,
};
use tandem_shards::amqp::message::{DecodedMessage, MessageBuilder};
use tandem_shards::amqp::performative::{
    condition, Begin, Close, DeliveryState, ErrorCondition, Open, Performative, Transfer,
};
use tandem_shards::client::{Client, ClientOptions};

/// How long the broker may take to start, and any one exchange to finish.
const START_DEADLINE: Duration = Duration::from_secs(20);
const REPLY_DEADLINE: Duration = Duration::from_secs(10);
/// The broker drops a peer that never answers its close after a 2 s grace; allow
/// for scheduling on a loaded machine.
const UNANSWERED_CLOSE_DEADLINE: Duration = Duration::from_secs(15);
/// `tandemd`'s default max-frame-size, which its open must advertise.
const DEFAULT_MAX_FRAME_SIZE: u32 = 65536;

// ---------------------------------------------------------------------------
// The broker process

/// A `tandemd` child on an OS-chosen port with its own data directory; killed and
/// cleaned up on drop.
struct Broker {
    child: Child,
    port: u16,
    data_dir: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl Broker {
    fn start() -> Broker {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let data_dir = std::env::temp_dir().join(format!(
            "tandem-e2e-malformed-{}-{nanos}",
            std::process::id()
        ));
        let mut child = Command::new(env!("CARGO_BIN_EXE_tandemd"))
            .args(["--port", "0", "--interface", "127.0.0.1", "--data-dir"])
            .arg(&data_dir)
            .args(["--auth", "no", "--worker-threads", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tandemd");

        // Both pipes are drained by threads for the broker's whole life, so it
        // never blocks writing; stdout lines come here, stderr is kept for reports.
        let (lines_tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_pipe = child.stderr.take().expect("stderr piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });

        let mut broker = Broker {
            child,
            port: 0,
            data_dir,
            stderr,
        };
        let deadline = Instant::now() + START_DEADLINE;
        let prefix = "tandemd listening on amqp://127.0.0.1:";
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        let (port, shards) = rest.split_once(' ').expect("port then shard count");
                        assert_eq!(shards, "(2 shards)", "{line}");
                        broker.port = port.parse().expect("numeric port");
                        return broker;
                    }
                }
                Err(e) => panic!(
                    "tandemd did not print its listening line within {START_DEADLINE:?} ({e}); stderr:\n{}",
                    broker.stderr()
                ),
            }
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn client(&self) -> Client {
        let url = format!("127.0.0.1:{}", self.port).parse().unwrap();
        Client::connect(&url, &ClientOptions::default()).unwrap()
    }

    fn assert_alive(&mut self) {
        let status = self.child.try_wait().expect("try_wait");
        assert!(
            status.is_none(),
            "tandemd exited ({status:?}); stderr:\n{}",
            self.stderr()
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

// ---------------------------------------------------------------------------
// A raw peer

/// What the broker sent, unit by unit. (A handful per test: boxing the frame
/// would only make the matches harder to read.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Reply {
    Header([u8; 8]),
    Frame(Frame),
    /// The socket is closed (end of stream or reset).
    Closed,
}

/// A TCP connection to the broker that writes whatever bytes a test builds and
/// reads the broker's replies with deadlines, never hanging.
struct Peer {
    stream: TcpStream,
    buf: BytesMut,
    closed: bool,
}

impl Peer {
    fn connect(broker: &Broker) -> Peer {
        let stream = TcpStream::connect(("127.0.0.1", broker.port)).expect("connect to tandemd");
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        Peer {
            stream,
            buf: BytesMut::new(),
            closed: false,
        }
    }

    /// A peer that has sent the plain AMQP header and its open and read the
    /// broker's header and open back.
    fn opened(broker: &Broker) -> Peer {
        let mut peer = Peer::connect(broker);
        let mut out = BytesMut::new();
        out.put_slice(&AMQP_HEADER);
        write_frame(&mut out, 0, &open());
        peer.send(&out);
        peer.expect_header(AMQP_HEADER);
        match peer.next(REPLY_DEADLINE) {
            Reply::Frame(Frame {
                body: Some(Performative::Open(o)),
                ..
            }) => assert_eq!(
                o.max_frame_size,
                Some(DEFAULT_MAX_FRAME_SIZE),
                "the broker's open advertises its max-frame-size"
            ),
            other => panic!("expected the broker's open, got {other:?}"),
        }
        peer
    }

    /// A peer with one session begun on channel 0.
    fn begun(broker: &Broker) -> Peer {
        let mut peer = Peer::opened(broker);
        peer.send_frame(0, &begin());
        match peer.next(REPLY_DEADLINE) {
            Reply::Frame(Frame {
                body: Some(Performative::Begin(b)),
                ..
            }) => assert_eq!(b.remote_channel, Some(0)),
            other => panic!("expected the broker's begin, got {other:?}"),
        }
        peer
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to tandemd");
    }

    fn send_frame(&mut self, channel: u16, perf: &Performative) {
        let mut out = BytesMut::new();
        write_frame(&mut out, channel, perf);
        self.send(&out);
    }

    /// Reads more bytes; false once the socket is closed.
    fn fill(&mut self, deadline: Instant) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return true;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    assert!(
                        Instant::now() < deadline,
                        "no reply from tandemd in time; unparsed bytes: {:02x?}",
                        &self.buf[..]
                    );
                }
                // The broker closing with our bytes unread resets the connection.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) =>
                {
                    return false
                }
                Err(e) => panic!("reading from tandemd: {e}"),
            }
        }
    }

    /// The next protocol header, frame or the end of the stream.
    fn next(&mut self, within: Duration) -> Reply {
        let deadline = Instant::now() + within;
        loop {
            // The broker sends a header first, and again after SASL.
            if self.buf.starts_with(b"AMQP") && self.buf.len() >= 8 {
                let header: [u8; 8] = self.buf.split_to(8)[..].try_into().expect("8 bytes");
                return Reply::Header(header);
            }
            if !self.buf.starts_with(b"AMQP") {
                match split_frame(&mut self.buf, 1 << 24) {
                    Ok(Some(raw)) => {
                        assert_eq!(
                            raw.frame_type, FRAME_AMQP,
                            "the broker sent a non-AMQP frame"
                        );
                        return Reply::Frame(decode_amqp(raw).expect("the broker's frame decodes"));
                    }
                    Ok(None) => {}
                    Err(e) => panic!("the broker sent a malformed frame: {e}"),
                }
            }
            if self.closed {
                assert!(
                    self.buf.is_empty(),
                    "the broker's stream ended inside a unit: {:02x?}",
                    &self.buf[..]
                );
                return Reply::Closed;
            }
            if !self.fill(deadline) {
                self.closed = true;
            }
        }
    }

    fn expect_header(&mut self, expected: [u8; 8]) {
        match self.next(REPLY_DEADLINE) {
            Reply::Header(h) => assert_eq!(h, expected, "protocol header"),
            other => panic!("expected a protocol header, got {other:?}"),
        }
    }

    /// Reads up to the broker's close frame (allowing frames the broker may send
    /// before it, e.g. its open when ours never decoded) and returns its error.
    fn expect_close(&mut self) -> ErrorCondition {
        loop {
            match self.next(REPLY_DEADLINE) {
                Reply::Frame(Frame {
                    body: Some(Performative::Close(Close { error })),
                    channel,
                    ..
                }) => {
                    assert_eq!(channel, 0, "close travels on channel 0");
                    return error.expect("the broker's close carries an error");
                }
                Reply::Frame(Frame {
                    body: Some(Performative::Open(_)),
                    ..
                }) => {}
                other => panic!("expected the broker's close, got {other:?}"),
            }
        }
    }

    /// Nothing more arrives and the socket closes.
    fn expect_socket_closed(&mut self, within: Duration) {
        match self.next(within) {
            Reply::Closed => {}
            other => panic!("expected the broker to close the socket, got {other:?}"),
        }
    }

    /// Answers the broker's close as a polite peer does, then sees the socket go.
    fn answer_close_and_expect_socket_closed(&mut self) {
        let mut out = BytesMut::new();
        write_frame(&mut out, 0, &Performative::Close(Close { error: None }));
        // The broker may have dropped the socket already (framing errors end the
        // connection at once), so the write may fail.
        let _ = self.stream.write_all(&out);
        self.expect_socket_closed(REPLY_DEADLINE);
    }
}

fn open() -> Performative {
    Performative::Open(Open {
        container_id: "e2e-malformed".into(),
        ..Default::default()
    })
}

fn begin() -> Performative {
    Performative::Begin(Begin {
        remote_channel: None,
        next_outgoing_id: 0,
        incoming_window: 100,
        outgoing_window: 100,
        handle_max: None,
        properties: None,
    })
}

/// A frame with a body we write by hand (a described list of our choosing).
fn raw_frame(channel: u16, body: &Value) -> Bytes {
    let mut out = BytesMut::new();
    let start = begin_frame(&mut out, FRAME_AMQP, channel);
    body.encode(&mut out);
    end_frame(&mut out, start);
    out.freeze()
}

fn described_list(code: u64, fields: Vec<Value>) -> Value {
    Value::Described(Box::new(Value::Ulong(code)), Box::new(Value::List(fields)))
}

fn assert_condition(error: &ErrorCondition, expected: &str, case: &str) {
    assert_eq!(error.condition, expected, "{case}: {error}");
}

// ---------------------------------------------------------------------------
// The abuse, one connection per case

fn garbage_instead_of_a_protocol_header(broker: &Broker) {
    for (case, bytes) in [
        ("an HTTP request", &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]),
        // Fewer than 8 bytes, but already not a prefix of any header.
        ("five bytes of junk", &b"HELLO"[..]),
        ("an unsupported AMQP version", &b"AMQP\x00\x02\x00\x00"[..]),
        ("an unknown protocol id", &b"AMQP\x02\x01\x00\x00"[..]),
    ] {
        let mut peer = Peer::connect(broker);
        peer.send(bytes);
        // Spec 2.2: answer with the header we support, then close. With `--auth
        // no` SASL is optional, so that is the plain AMQP header.
        match peer.next(REPLY_DEADLINE) {
            Reply::Header(h) => assert!(
                h == AMQP_HEADER || h == SASL_HEADER,
                "{case}: answered with {h:02x?}"
            ),
            other => panic!("{case}: expected a protocol header, got {other:?}"),
        }
        peer.expect_socket_closed(REPLY_DEADLINE);
    }
}

fn undecodable_frame_body_is_a_decode_error(broker: &Broker) {
    // A well-framed frame whose body starts with a reserved format code, sent
    // before any open: the broker opens (to be able to close) and closes.
    let mut peer = Peer::connect(broker);
    let mut out = BytesMut::new();
    out.put_slice(&AMQP_HEADER);
    out.put_slice(&[0, 0, 0, 16, 2, FRAME_AMQP, 0, 0]);
    out.put_slice(&[0xff; 8]);
    peer.send(&out);
    peer.expect_header(AMQP_HEADER);
    let error = peer.expect_close();
    assert_condition(&error, condition::DECODE_ERROR, "reserved format code");
    peer.answer_close_and_expect_socket_closed();

    // After the open: a described value that is no performative.
    let mut peer = Peer::opened(broker);
    peer.send(&raw_frame(
        0,
        &described_list(0x70, vec![Value::Bool(true)]),
    ));
    let error = peer.expect_close();
    assert_condition(&error, condition::DECODE_ERROR, "unknown descriptor");
    peer.answer_close_and_expect_socket_closed();

    // A list whose declared count does not fit its declared size.
    let mut peer = Peer::opened(broker);
    let mut out = BytesMut::new();
    let start = begin_frame(&mut out, FRAME_AMQP, 0);
    out.put_slice(&[0x00, 0x53, 0x18, 0xc0, 0x02, 0x7f, 0x40]);
    end_frame(&mut out, start);
    peer.send(&out);
    let error = peer.expect_close();
    assert_condition(&error, condition::DECODE_ERROR, "lying list count");
    peer.answer_close_and_expect_socket_closed();
}

fn garbage_frame_bytes_are_a_framing_error(broker: &Broker) {
    // 0xff.. as a frame header claims a 4 GiB frame.
    let mut peer = Peer::opened(broker);
    peer.send(&[0xff; 16]);
    let error = peer.expect_close();
    assert_condition(&error, condition::FRAMING_ERROR, "junk frame header");
    peer.expect_socket_closed(REPLY_DEADLINE);
}

fn truncated_frame_then_end_of_stream(broker: &Broker) {
    let mut peer = Peer::opened(broker);
    let mut out = BytesMut::new();
    write_frame(&mut out, 0, &begin());
    peer.send(&out[..out.len() - 3]);
    peer.stream.shutdown(Shutdown::Write).expect("half-close");
    // The engine treats a vanished peer as gone (`input_eof`): nothing can be
    // said to a peer that stopped talking mid-frame, so no close frame is sent,
    // and the broker closes its side too.
    peer.expect_socket_closed(REPLY_DEADLINE);
}

fn frame_larger_than_max_frame_size_is_a_framing_error(broker: &Broker) {
    let mut peer = Peer::opened(broker);
    // Only the header of the frame: the broker must refuse on the size alone,
    // without waiting for (or buffering) the body.
    let size = DEFAULT_MAX_FRAME_SIZE + 1;
    let mut out = BytesMut::new();
    out.put_u32(size);
    out.put_slice(&[2, FRAME_AMQP, 0, 0]);
    peer.send(&out);
    let error = peer.expect_close();
    assert_condition(&error, condition::FRAMING_ERROR, "oversize frame");
    assert!(
        error
            .description
            .as_deref()
            .unwrap_or("")
            .contains(&size.to_string()),
        "the error names the size: {error}"
    );
    peer.expect_socket_closed(REPLY_DEADLINE);
}

fn frame_smaller_than_its_header_is_a_framing_error(broker: &Broker) {
    let mut peer = Peer::opened(broker);
    peer.send(&[0, 0, 0, 4, 2, FRAME_AMQP, 0, 0]);
    let error = peer.expect_close();
    assert_condition(&error, condition::FRAMING_ERROR, "4-byte frame");
    peer.expect_socket_closed(REPLY_DEADLINE);

    // A data offset below 2 words points inside the frame header.
    let mut peer = Peer::opened(broker);
    peer.send(&[0, 0, 0, 8, 1, FRAME_AMQP, 0, 0]);
    let error = peer.expect_close();
    assert_condition(&error, condition::FRAMING_ERROR, "data offset 1");
    peer.expect_socket_closed(REPLY_DEADLINE);
}

fn sasl_frame_after_negotiation_is_a_framing_error(broker: &Broker) {
    let mut peer = Peer::opened(broker);
    let mut out = BytesMut::new();
    let start = begin_frame(&mut out, FRAME_SASL, 0);
    described_list(0x41, vec![Value::symbol("ANONYMOUS")]).encode(&mut out);
    end_frame(&mut out, start);
    peer.send(&out);
    let error = peer.expect_close();
    assert_condition(&error, condition::FRAMING_ERROR, "SASL frame after open");
    peer.answer_close_and_expect_socket_closed();
}

fn transfer_on_an_unattached_handle(broker: &Broker) {
    let mut peer = Peer::begun(broker);
    peer.send_frame(
        0,
        &Performative::Transfer(Transfer {
            handle: 7,
            delivery_id: Some(0),
            delivery_tag: Some(Bytes::from_static(b"t")),
            message_format: Some(0),
            ..Default::default()
        }),
    );
    let error = peer.expect_close();
    assert_condition(&error, condition::UNATTACHED_HANDLE, "transfer on handle 7");
    // This peer never answers the close: the broker must still let go of it.
    peer.expect_socket_closed(UNANSWERED_CLOSE_DEADLINE);
}

fn frame_on_a_channel_without_a_session(broker: &Broker) {
    let mut peer = Peer::opened(broker);
    peer.send(&raw_frame(
        5,
        &described_list(0x16, vec![Value::Uint(0), Value::Bool(true)]),
    ));
    let error = peer.expect_close();
    assert_condition(&error, condition::FRAMING_ERROR, "detach on channel 5");
    peer.answer_close_and_expect_socket_closed();
}

fn begin_on_a_channel_already_in_use(broker: &Broker) {
    let mut peer = Peer::begun(broker);
    peer.send_frame(0, &begin());
    let error = peer.expect_close();
    assert_condition(
        &error,
        condition::FRAMING_ERROR,
        "second begin on channel 0",
    );
    peer.answer_close_and_expect_socket_closed();
}

fn performative_with_a_wrong_field_type(broker: &Broker) {
    // An open whose container-id is a number, as the first frame.
    let mut peer = Peer::connect(broker);
    let mut out = BytesMut::new();
    out.put_slice(&AMQP_HEADER);
    out.put_slice(&raw_frame(0, &described_list(0x10, vec![Value::Uint(42)])));
    peer.send(&out);
    peer.expect_header(AMQP_HEADER);
    let error = peer.expect_close();
    assert_condition(&error, condition::DECODE_ERROR, "numeric container-id");
    assert!(
        error
            .description
            .as_deref()
            .unwrap_or("")
            .contains("open.container-id"),
        "the error names the field: {error}"
    );
    peer.answer_close_and_expect_socket_closed();

    // A flow whose incoming-window is a string, inside a session.
    let mut peer = Peer::begun(broker);
    peer.send(&raw_frame(
        0,
        &described_list(
            0x13,
            vec![
                Value::Uint(0),
                Value::string("wide"),
                Value::Uint(0),
                Value::Uint(100),
            ],
        ),
    ));
    let error = peer.expect_close();
    assert_condition(&error, condition::DECODE_ERROR, "string incoming-window");
    assert!(
        error
            .description
            .as_deref()
            .unwrap_or("")
            .contains("flow.incoming-window"),
        "the error names the field: {error}"
    );
    peer.answer_close_and_expect_socket_closed();
}

// ---------------------------------------------------------------------------
// The broker afterwards

/// Sends one message on `queue` and receives it back on the same connection.
fn round_trip(client: &mut Client, queue: &str, text: &str) {
    let sender = client.sender(queue).unwrap();
    let receiver = client.receiver(queue, 10).unwrap();
    let message = MessageBuilder {
        body: Some(Value::string(text)),
        ..Default::default()
    }
    .encode();
    let id = client.send(sender, &message, false).unwrap();
    assert_eq!(client.outcome(id).unwrap(), DeliveryState::Accepted);
    let received = client
        .receive(REPLY_DEADLINE)
        .unwrap()
        .unwrap_or_else(|| panic!("no message on {queue} within {REPLY_DEADLINE:?}"));
    assert_eq!(received.link, receiver);
    let decoded = DecodedMessage::decode(&received.payload).unwrap();
    assert_eq!(decoded.body, Some(Value::string(text)));
    client.accept(&received).unwrap();
}

#[test]
fn malformed_input_closes_only_the_offending_connection() {
    let mut broker = Broker::start();
    // Opened before the abuse and kept open through it.
    let mut survivor = broker.client();
    round_trip(&mut survivor, "before-abuse", "warm-up");

    // Twice over, so both shards see each kind of abuse whichever way the kernel
    // spreads connections across them.
    for _ in 0..2 {
        garbage_instead_of_a_protocol_header(&broker);
        undecodable_frame_body_is_a_decode_error(&broker);
        garbage_frame_bytes_are_a_framing_error(&broker);
        truncated_frame_then_end_of_stream(&broker);
        frame_larger_than_max_frame_size_is_a_framing_error(&broker);
        frame_smaller_than_its_header_is_a_framing_error(&broker);
        sasl_frame_after_negotiation_is_a_framing_error(&broker);
        frame_on_a_channel_without_a_session(&broker);
        begin_on_a_channel_already_in_use(&broker);
        performative_with_a_wrong_field_type(&broker);
        broker.assert_alive();
    }
    // The slow one (the broker waits out its close grace) runs once.
    transfer_on_an_unattached_handle(&broker);

    broker.assert_alive();
    round_trip(&mut survivor, "after-abuse-old-connection", "still here");
    let mut fresh = broker.client();
    round_trip(&mut fresh, "after-abuse-new-connection", "hello again");
    // The survivor sees what the fresh connection left on a shared queue.
    let sender = fresh.sender("shared-after-abuse").unwrap();
    let message = MessageBuilder {
        body: Some(Value::string("across connections")),
        ..Default::default()
    }
    .encode();
    let id = fresh.send(sender, &message, false).unwrap();
    assert_eq!(fresh.outcome(id).unwrap(), DeliveryState::Accepted);
    survivor.receiver("shared-after-abuse", 1).unwrap();
    let received = survivor
        .receive(REPLY_DEADLINE)
        .unwrap()
        .expect("the survivor receives the fresh connection's message");
    assert_eq!(
        DecodedMessage::decode(&received.payload).unwrap().body,
        Some(Value::string("across connections"))
    );
    survivor.accept(&received).unwrap();
    fresh.close().unwrap();
    survivor.close().unwrap();
    broker.assert_alive();
}

/// A peer's open may ask for heartbeats at any interval; an idle-time-out of 1 ms
/// makes the engine's interval (half of it) zero, and the shard then writes
/// heartbeats back to back (about 60,000 a second measured), starving its other
/// connections.
#[test]
fn a_tiny_idle_timeout_does_not_flood_the_peer_with_heartbeats() {
    let broker = Broker::start();
    let mut peer = Peer::connect(&broker);
    let mut out = BytesMut::new();
    out.put_slice(&AMQP_HEADER);
    write_frame(
        &mut out,
        0,
        &Performative::Open(Open {
            container_id: "impatient".into(),
            idle_timeout: Some(1),
            ..Default::default()
        }),
    );
    peer.send(&out);
    peer.expect_header(AMQP_HEADER);
    match peer.next(REPLY_DEADLINE) {
        Reply::Frame(Frame {
            body: Some(Performative::Open(_)),
            ..
        }) => {}
        other => panic!("expected the broker's open, got {other:?}"),
    }
    let window = Duration::from_millis(300);
    let start = Instant::now();
    let mut bytes = peer.buf.len();
    let mut chunk = [0u8; 64 * 1024];
    while start.elapsed() < window {
        match peer.stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes += n,
            Err(_) => {}
        }
    }
    // Even one heartbeat per millisecond would be absurd; allow that much.
    let heartbeats = bytes / 8;
    assert!(
        heartbeats < window.as_millis() as usize,
        "{heartbeats} heartbeats in {window:?}"
    );
}

/// A small deterministic generator, so a failing case can be replayed from
/// the seed the test prints.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// `min` to `min + spread - 1` random bytes.
    fn bytes(&mut self, min: usize, spread: u64) -> Vec<u8> {
        let n = min + self.below(spread) as usize;
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One random frame, of a kind the broker must refuse: a frame header that
/// lies (a size beyond any max-frame-size, a size shorter than the header, a
/// data offset inside it), or a well-sized frame with random bytes for a body
/// (half of them starting like a described performative, so the decoder gets
/// past the descriptor into the fields).
fn random_frame(rng: &mut XorShift) -> Vec<u8> {
    let mut out = BytesMut::new();
    match rng.below(8) {
        0 => {
            // A first size byte of at least 1 claims at least 16 MiB.
            let mut header = rng.bytes(8, 32);
            header[0] = header[0].max(1);
            out.put_slice(&header);
        }
        1 => {
            out.put_u32(rng.below(8) as u32);
            out.put_slice(&rng.bytes(4, 16));
        }
        2 => {
            let body = rng.bytes(1, 32);
            out.put_u32(8 + body.len() as u32);
            out.put_u8(rng.below(2) as u8);
            out.put_u8(FRAME_AMQP);
            out.put_u16(0);
            out.put_slice(&body);
        }
        _ => {
            let mut body = Vec::new();
            if rng.below(2) == 0 {
                // 0x00 0x53 CODE: a performative's descriptor (0x10..=0x18).
                body.extend_from_slice(&[0x00, 0x53, 0x10 + rng.below(9) as u8]);
            }
            body.extend(rng.bytes(1, 200));
            let frame_type = match rng.below(4) {
                0 => FRAME_SASL,
                1 => rng.next() as u8,
                _ => FRAME_AMQP,
            };
            let channel = if rng.below(2) == 0 {
                0
            } else {
                rng.next() as u16
            };
            out.put_u32(8 + body.len() as u32);
            out.put_u8(2);
            out.put_u8(frame_type);
            out.put_u16(channel);
            out.put_slice(&body);
        }
    }
    out.to_vec()
}

/// A close's error is clear when it is one of the spec's conditions and says
/// in words what was wrong.
fn assert_clear(error: &ErrorCondition, case: &str) {
    let known = [
        condition::DECODE_ERROR,
        condition::FRAMING_ERROR,
        condition::NOT_ALLOWED,
        condition::INVALID_FIELD,
        condition::NOT_IMPLEMENTED,
        condition::UNATTACHED_HANDLE,
        condition::HANDLE_IN_USE,
        condition::WINDOW_VIOLATION,
        condition::RESOURCE_LIMIT_EXCEEDED,
    ];
    assert!(
        known.contains(&error.condition.as_str()),
        "{case}: closed with {error}"
    );
    assert!(
        error.description.as_deref().is_some_and(|d| !d.is_empty()),
        "{case}: the close names no reason: {error}"
    );
}

/// The reliability probe: 2,000 connections each send a valid protocol header
/// (half of them an open too) and then a random frame. Each is closed with a
/// clear error; a client connected throughout keeps working, and the broker
/// never panics.
#[test]
fn two_thousand_random_frames_after_a_valid_header_each_close_with_a_clear_error() {
    const FRAMES: usize = 2000;
    let seed = std::env::var("TANDEM_RANDOM_FRAMES_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7a4d_e3b1_0c5f_9e21_u64);
    eprintln!("seed {seed} (TANDEM_RANDOM_FRAMES_SEED replays it)");
    let mut rng = XorShift(seed);
    let mut broker = Broker::start();
    let mut survivor = broker.client();
    round_trip(&mut survivor, "random-frames-0", "before");

    let mut conditions = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..FRAMES {
        let frame = random_frame(&mut rng);
        let case = format!("frame {i} {frame:02x?}");
        let mut peer = if i % 2 == 0 {
            let mut peer = Peer::connect(&broker);
            peer.send(&AMQP_HEADER);
            peer.expect_header(AMQP_HEADER);
            peer
        } else {
            Peer::opened(&broker)
        };
        peer.send(&frame);
        let error = peer.expect_close();
        assert_clear(&error, &case);
        *conditions.entry(error.condition.clone()).or_default() += 1;
        peer.answer_close_and_expect_socket_closed();
        if i % 250 == 249 {
            broker.assert_alive();
            let queue = format!("random-frames-{}", i + 1);
            round_trip(&mut survivor, &queue, "still here");
        }
    }
    eprintln!("{FRAMES} random frames closed with {conditions:?}");
    broker.assert_alive();
    round_trip(&mut survivor, "random-frames-all", "after all");
    let mut fresh = broker.client();
    round_trip(&mut fresh, "random-frames-fresh", "a new connection");
    assert!(!broker.stderr().contains("panicked"), "{}", broker.stderr());
}
