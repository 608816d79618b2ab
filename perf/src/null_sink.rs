//! `--null`: the harness against itself. Every harness client gets its own
//! in-process peer on a loopback port, speaking AMQP with the project's engine
//! from the server side ([`Connection::server`]): a sender's peer is a sink that
//! settles and discards, a receiver's peer is a source that sends stamped
//! messages as fast as credit allows. No broker stands between them, so the
//! figures are what the harness itself can generate and absorb; they are quoted
//! beside every broker result.
//!
//! Each peer runs on its own executor, pinned to a different core than its
//! client, and measures its own thread's CPU so the harness's figure can
//! leave it out.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::net::TcpListener;
use glommio::ExecutorJoinHandle;
use tandem_shards::amqp::connection::Connection;

use crate::consumer::{Consumer, ConsumerStats};
use crate::executors;
use crate::producer::{Producer, ProducerStats};
use crate::progress::Progress;
use crate::wire;

/// How long a peer waits for its client when the run does not abort first.
const ACCEPT_DEADLINE: Duration = Duration::from_secs(30);

/// The peer of one harness client.
pub enum Peer {
    /// Takes a sender's messages.
    Sink(Consumer),
    /// Feeds a receiver.
    Source(Producer),
}

/// What a peer did.
pub enum PeerStats {
    Sink(ConsumerStats),
    Source(ProducerStats),
}

/// A started peer: where its client connects, and its thread.
pub struct RunningPeer {
    pub url: String,
    pub handle: ExecutorJoinHandle<Option<PeerStats>>,
}

/// Starts `peer` listening on a fresh loopback port, on `core`.
pub fn start(
    peer: Peer,
    core: Option<usize>,
    name: String,
    progress: Arc<Progress>,
) -> Result<RunningPeer, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("--null: cannot listen on loopback: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("--null: no local address: {e}"))?;
    let fd = listener.into_raw_fd();
    let handle = executors::spawn(name, core, move || async move {
        // SAFETY: the fd is a listening socket we created and handed over.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        let accepted = futures_lite::future::or(async { listener.accept().await.ok() }, async {
            let deadline = Instant::now() + ACCEPT_DEADLINE;
            while !progress.aborted() && Instant::now() < deadline {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            None
        })
        .await;
        let stream = accepted?;
        let conn = Connection::server(wire::server_config(), Instant::now());
        Some(match peer {
            Peer::Sink(c) => PeerStats::Sink(
                wire::drive(stream, conn, c, Default::default())
                    .await
                    .into_stats(),
            ),
            Peer::Source(p) => PeerStats::Source(
                wire::drive(stream, conn, p, Default::default())
                    .await
                    .into_stats(),
            ),
        })
    })?;
    Ok(RunningPeer {
        url: addr.to_string(),
        handle,
    })
}
