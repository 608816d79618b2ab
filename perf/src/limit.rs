//! The `limit` row: the exact byte stream a sender writes (transfer frames of
//! stamped messages, made by the project's engine) pushed through a plain
//! loopback TCP connection to a reader that discards it. No AMQP processing on
//! either side: what the machine can move at all, so broker figures can be read
//! as a fraction of it. Writer and reader sit on different cores, like a sender
//! and a receiver.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::{Duration, Instant};

use clap::Args;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use serde::Serialize;
use tandem_shards::amqp::connection::{Connection, ConnectionConfig, Sasl};
use tandem_shards::amqp::performative::Role as LinkRole;
use tandem_shards::duration::parse_duration;

use crate::executors;
use crate::message::{Template, STAMP_LEN};
use crate::report::thousands;
use crate::wire::{LinkSetup, Setup};
use crate::Output;

/// Messages per chunk of the sample stream (the writer repeats the chunk).
const CHUNK_MESSAGES: u64 = 256;
/// Bytes per read on the discarding side.
const READ_BUF: usize = 256 * 1024;

#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    /// Body bytes per message.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Messages' worth of bytes to push [default: 1000000].
    #[arg(long, conflicts_with = "duration")]
    pub messages: Option<u64>,
    /// Push for this long instead.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Frame the messages pre-settled (a few bytes shorter).
    #[arg(long)]
    pub presettled: bool,
    #[arg(long)]
    pub json: bool,
}

/// What the loopback moved.
#[derive(Debug, Clone, Serialize)]
pub struct LimitResult {
    pub size: usize,
    /// Bytes on the wire per message (frame header, transfer, message).
    pub wire_bytes_per_msg: usize,
    pub bytes: u64,
    pub seconds: f64,
    pub msg_per_s: f64,
    /// Body bytes per second, as the other rows count MB/s.
    pub mb_per_s: f64,
    pub wire_mb_per_s: f64,
}

impl LimitResult {
    pub fn to_text(&self) -> String {
        format!(
            "tandem-perf limit: loopback TCP, {}-byte messages ({} bytes framed)\n  moved {} bytes in {:.3} s: {} msg/s ({:.1} MB/s of bodies, {:.1} MB/s on the wire)\n",
            self.size,
            self.wire_bytes_per_msg,
            self.bytes,
            self.seconds,
            thousands(self.msg_per_s),
            self.mb_per_s,
            self.wire_mb_per_s
        )
    }
}

pub fn command(args: &LimitArgs) -> Result<Output, String> {
    let r = run(
        args.size,
        args.presettled,
        args.duration.map_or(
            Budget::Messages(args.messages.unwrap_or(1_000_000)),
            Budget::Time,
        ),
    )?;
    Ok(Output {
        text: r.to_text(),
        json: serde_json::to_string_pretty(&r).unwrap_or_default(),
        code: 0,
    })
}

/// How much to push.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    Messages(u64),
    Time(Duration),
}

/// Pushes `budget` worth of `size`-byte messages' frames through loopback TCP.
pub fn run(size: usize, presettled: bool, budget: Budget) -> Result<LimitResult, String> {
    let size = size.max(STAMP_LEN);
    let chunk = sample_stream(size, presettled, CHUNK_MESSAGES)?;
    let per_msg = chunk.len() / CHUNK_MESSAGES as usize;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("limit: cannot listen on loopback: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("limit: no local address: {e}"))?;
    let fd = listener.into_raw_fd();
    let cores = executors::cores();
    let reader = executors::spawn(
        "perf-limit-reader".into(),
        executors::core_for(&cores, 0),
        move || async move {
            // SAFETY: the fd is a listening socket we created and handed over.
            let listener = unsafe { TcpListener::from_raw_fd(fd) };
            let mut stream = listener.accept().await.map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; READ_BUF];
            let mut bytes = 0u64;
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => bytes += n as u64,
                    Err(e) => return Err(format!("limit: read: {e}")),
                }
            }
            Ok::<_, String>((bytes, Instant::now()))
        },
    )?;
    let writer = executors::spawn(
        "perf-limit-writer".into(),
        executors::core_for(&cores, 1),
        move || async move {
            let mut stream = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("limit: connect: {e}"))?;
            let _ = stream.set_nodelay(true);
            let start = Instant::now();
            let mut written = 0u64;
            loop {
                let more = match budget {
                    Budget::Messages(n) => written < n * per_msg as u64,
                    Budget::Time(d) => start.elapsed() < d,
                };
                if !more {
                    break;
                }
                stream
                    .write_all(&chunk)
                    .await
                    .map_err(|e| format!("limit: write: {e}"))?;
                written += chunk.len() as u64;
            }
            let _ = stream.close().await;
            Ok::<_, String>(start)
        },
    )?;
    let start = writer.join().map_err(|e| format!("limit writer: {e}"))??;
    let (bytes, end) = reader.join().map_err(|e| format!("limit reader: {e}"))??;
    let seconds = end.duration_since(start).as_secs_f64().max(1e-9);
    let msgs = bytes as f64 / per_msg as f64;
    Ok(LimitResult {
        size,
        wire_bytes_per_msg: per_msg,
        bytes,
        seconds,
        msg_per_s: msgs / seconds,
        mb_per_s: msgs / seconds * size as f64 / 1e6,
        wire_mb_per_s: bytes as f64 / seconds / 1e6,
    })
}

/// The bytes a sender writes for `count` messages of `size`: an in-memory
/// client and server engine negotiate a link, then the client sends.
pub fn sample_stream(size: usize, presettled: bool, count: u64) -> Result<Vec<u8>, String> {
    let now = Instant::now();
    let config = |sasl| ConnectionConfig {
        container_id: "tandem-perf-limit".into(),
        max_frame_size: 1024 * 1024,
        channel_max: 1,
        idle_timeout: None,
        properties: None,
        max_message_size: 256 * 1024 * 1024,
        hostname: None,
        sasl,
    };
    let mut client = Connection::client(
        config(Sasl::Client {
            credentials: None,
            skip: true,
        }),
        now,
    );
    let mut server = Connection::server(
        config(Sasl::Server {
            mechanisms: Vec::new(),
            authenticator: Box::new(|_: &str, _: &[u8]| None),
            require: false,
        }),
        now,
    );
    let mut ours = LinkSetup::client(LinkRole::Sender, "limit", "limit", presettled);
    let mut theirs = LinkSetup::server();
    let credit = u32::try_from(count).map_err(|_| "limit: too many messages per chunk")?;
    // Open, begin, attach, flow: a few round trips.
    for _ in 0..8 {
        let mut bytes = client.output().split();
        server.input(&mut bytes, now);
        while let Some(ev) = server.poll_event() {
            if let Setup::Up(link) = theirs.on_event(&mut server, ev) {
                server.grant_credit(link, credit, false);
            }
        }
        let mut bytes = server.output().split();
        client.input(&mut bytes, now);
        while let Some(ev) = client.poll_event() {
            ours.on_event(&mut client, ev);
        }
        if ours.link().is_some_and(|l| client.credit(l) >= credit) {
            break;
        }
    }
    let link = ours
        .link()
        .ok_or("limit: the in-memory engines did not attach a link")?;
    client.output().clear();
    let mut template = Template::new(0, 0, size, false);
    for seq in 0..count {
        client
            .send(link, &seq.to_be_bytes(), template.stamp(seq, 0), presettled)
            .ok_or("limit: no credit in the in-memory engine")?;
    }
    Ok(client.output().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_stream_is_transfer_frames_a_little_longer_than_the_bodies() {
        let stream = sample_stream(1024, false, 16).expect("engines attach");
        let per = stream.len() / 16;
        assert!(per > 1024 && per < 1024 + 64, "{per} bytes per message");
        // Walk the frames by their size fields: exactly 16, covering the stream.
        let (mut at, mut frames) = (0usize, 0);
        while at < stream.len() {
            let size =
                u32::from_be_bytes([stream[at], stream[at + 1], stream[at + 2], stream[at + 3]]);
            at += size as usize;
            frames += 1;
        }
        assert_eq!((at, frames), (stream.len(), 16));
    }

    #[test]
    fn loopback_moves_a_small_budget() {
        let r = run(256, true, Budget::Messages(20_000)).expect("loopback works");
        assert!(r.bytes >= r.wire_bytes_per_msg as u64 * 20_000, "{r:?}");
        assert!(r.msg_per_s > 0.0);
    }
}
