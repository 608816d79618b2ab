//! The thin glommio layer: one pinned executor per shard, `SO_REUSEPORT`
//! listeners, one task per connection (one socket descriptor, both directions,
//! through its [`crate::transport::Transport`]), and one bounded `rtrb`
//! ring per ordered pair of shards with a doorbell (a one-slot glommio shared
//! channel) so an idle shard sleeps instead of spinning. Everything it does to
//! broker state goes through [`Shard`]'s methods; nothing here knows AMQP.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};

use crate::amqp::performative::{condition, ErrorCondition};
use crate::broker::ext::Extension;
use crate::broker::handover::Arrival;
use crate::broker::{BrokerSettings, Shard, ShardMsg};
use crate::stall::{watched, StallWatch};
use crate::stats::{StatsHandle, PUBLISH_EVERY};
use crate::transport::Transport;

/// Messages a ring holds before the sender keeps them in its outbox instead.
const RING_CAPACITY: usize = 16 * 1024;
/// Housekeeping ticks (50 ms when idle) between looks at whether queues shrank
/// enough to hand memory back.
const RELEASE_MEMORY_TICKS: u32 = 10;
/// How long start-up waits for a port whose listener still answers although
/// its broker may just have died, before calling the port in use.
const PREDECESSOR_GRACE: Duration = Duration::from_secs(3);
/// How long a closing connection waits for the peer's close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// A connection's task yields to the shard's other tasks after moving this
/// many bytes in a row: a socket that always has data ready never makes its
/// reads wait, so without a yield one poll would serve it for as long as the
/// peer keeps up (polls of several ms under load, found by the stall
/// detector), while every other connection of the shard waits.
const YIELD_AFTER_BYTES: usize = 128 * 1024;
/// The least room a connection's read is offered (see `connection_task`).
/// Zeroed room is resident memory: an idle connection holds this much, so
/// 10,000 idle connections hold 40 MiB of it.
const MIN_READ_ROOM: usize = 4 * 1024;
/// The same for a ring's task: messages handled before it yields.
const RING_BATCH: usize = 1024;
/// Deliveries one dispatch of a queue hands out before the shard's other
/// tasks get a turn (a credit of 1,000 over a deep queue otherwise encodes
/// 1,000 messages in one poll).
const DISPATCH_BATCH: usize = 128;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("port {port} on {interface} is already in use (another broker running?); choose another with --port")]
    PortInUse { interface: String, port: u16 },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "cannot start the io_uring runtime: {reason}. Tandem needs Linux 5.8+ with io_uring enabled \
         (sysctl kernel.io_uring_disabled=0; containers must not block io_uring_setup via seccomp) \
         and enough locked memory (ulimit -l is {memlock}; raise it, e.g. `ulimit -l 65536` or \
         LimitMEMLOCK= in systemd)"
    )]
    Runtime { reason: String, memlock: String },
    #[error("shard {shard} failed to start: {reason}")]
    Shard { shard: usize, reason: String },
}

/// A running broker: its address, and how to stop it.
pub struct Running {
    pub addr: SocketAddr,
    /// The TLS port's address, if there is one.
    pub tls_addr: Option<SocketAddr>,
    stop: Arc<AtomicBool>,
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
    stats: StatsHandle,
}

impl Running {
    /// The shards' counters, readable from any thread (a metrics exporter).
    pub fn stats(&self) -> StatsHandle {
        self.stats.clone()
    }

    /// Closes every connection politely and waits for the shards to finish.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles {
            let _ = h.join();
        }
    }
}

fn memlock_limit() -> String {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return "unknown".into();
    }
    if r.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        format!("{} KiB", r.rlim_cur / 1024)
    }
}

/// Checks that an io_uring executor can be created here at all.
fn check_runtime() -> Result<(), StartError> {
    LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .map(drop)
        .map_err(|e| StartError::Runtime {
            reason: e.to_string(),
            memlock: memlock_limit(),
        })
}

fn listener_socket(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let domain = if addr.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_port(true)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s)
}

/// Builds each shard's extension on that shard's thread (the extension need
/// not be `Send`): called with the shard's id.
pub type ExtensionFactory = Arc<dyn Fn(usize) -> Box<dyn Extension> + Send + Sync>;

/// Starts `settings.shards` shards listening on `bind` (port 0 picks one); with
/// `extension`, every shard runs one (HA replication).
pub fn start(
    settings: BrokerSettings,
    bind: SocketAddr,
    extension: Option<ExtensionFactory>,
) -> Result<Running, StartError> {
    check_runtime()?;
    let n = settings.shards.max(1);
    // With SO_REUSEPORT a second broker of the same user could bind the same port
    // silently; a plain bind first proves the port is free.
    if bind.port() != 0 {
        if let Err(e) = std::net::TcpListener::bind(bind) {
            if e.kind() != std::io::ErrorKind::AddrInUse {
                return Err(StartError::Listen {
                    addr: bind,
                    source: e,
                });
            }
            // The plain bind also fails while connections of a broker that just
            // died on this port are still closing; only a live listener is
            // another broker (a resource manager restarts us at once).
            let probe = if bind.ip().is_unspecified() {
                SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), bind.port())
            } else {
                bind
            };
            // The listener of a broker killed a moment ago can outlive its
            // process briefly (io_uring tears its files down asynchronously)
            // and still complete connections: give it a moment to go.
            let since = Instant::now();
            while std::net::TcpStream::connect_timeout(&probe, Duration::from_secs(1)).is_ok() {
                if since.elapsed() >= PREDECESSOR_GRACE {
                    return Err(StartError::PortInUse {
                        interface: bind.ip().to_string(),
                        port: bind.port(),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let first =
        listener_socket(bind).map_err(|source| StartError::Listen { addr: bind, source })?;
    let addr = first
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| StartError::Listen {
            addr: bind,
            source: std::io::Error::other("no local address"),
        })?;
    let mut listeners = vec![first];
    for _ in 1..n {
        listeners
            .push(listener_socket(addr).map_err(|source| StartError::Listen { addr, source })?);
    }
    // The TLS port (ssl-port), on the same interface: one listener per worker.
    let mut tls_listeners = Vec::new();
    let mut tls_addr = None;
    if let Some(tls) = &settings.tls {
        let mut at = SocketAddr::new(bind.ip(), tls.port);
        for _ in 0..n {
            let l =
                listener_socket(at).map_err(|source| StartError::Listen { addr: at, source })?;
            if let Some(bound) = l.local_addr().ok().and_then(|a| a.as_socket()) {
                at = bound;
            }
            tls_listeners.push(l);
        }
        tls_addr = Some(at);
    }

    // Every shard: the workers, then the service shard if there is one.
    let total = n + usize::from(settings.service_shard.is_some());
    // Rings and doorbells for every ordered pair (i -> j).
    type Out = Option<(rtrb::Producer<ShardMsg>, SharedSender<()>)>;
    type In = Option<(rtrb::Consumer<ShardMsg>, SharedReceiver<()>)>;
    let mut outgoing: Vec<Vec<Out>> = (0..total)
        .map(|_| (0..total).map(|_| None).collect())
        .collect();
    let mut incoming: Vec<Vec<In>> = (0..total)
        .map(|_| (0..total).map(|_| None).collect())
        .collect();
    for i in 0..total {
        for j in 0..total {
            if i != j {
                let (p, c) = rtrb::RingBuffer::new(RING_CAPACITY);
                let (bell_tx, bell_rx) = shared_channel::new_bounded(1);
                outgoing[i][j] = Some((p, bell_tx));
                incoming[j][i] = Some((c, bell_rx));
            }
        }
    }

    let cores: Vec<usize> = core_ids();
    let stop = Arc::new(AtomicBool::new(false));
    let conn_count = Arc::new(AtomicUsize::new(0));
    let settings = Arc::new(settings);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, (usize, String)>>();
    let stats = StatsHandle::new(total);
    let mut handles = Vec::new();
    let listeners = listeners.into_iter().map(Some).chain(std::iter::once(None));
    let mut tls_listeners = tls_listeners.into_iter();
    for (id, ((listener, out), inc)) in listeners.zip(outgoing).zip(incoming).enumerate() {
        let ext = extension.clone();
        let service = id >= n;
        let placement = match (service, settings.service_cpu) {
            (true, Some(cpu)) => Placement::Fixed(cpu),
            (true, None) => cores
                .last()
                .map_or(Placement::Unbound, |c| Placement::Fixed(*c)),
            (false, _) if n <= cores.len() => Placement::Fixed(cores[id]),
            (false, _) => Placement::Unbound,
        };
        let name = match &settings.service_shard {
            Some(name) if service => name.clone(),
            _ => format!("shard-{id}"),
        };
        let settings = settings.clone();
        let stop = stop.clone();
        let ready = ready_tx.clone();
        let conn_count = conn_count.clone();
        let stats = stats.clone();
        let fd = listener.map(|l| l.into_raw_fd());
        let tls_fd = (!service)
            .then(|| tls_listeners.next())
            .flatten()
            .map(|l| l.into_raw_fd());
        let handle = LocalExecutorBuilder::new(placement)
            .name(&name)
            .spawn(move || async move {
                let stalls = StallWatch::new(id, settings.stall_threshold);
                let main = shard_main(
                    id,
                    settings,
                    fd,
                    tls_fd,
                    out,
                    inc,
                    stop,
                    conn_count,
                    ready,
                    ext,
                    stats,
                    stalls.clone(),
                );
                let what = stalls.label(|| "housekeeping".into());
                watched(stalls, what, main).await;
            })
            .map_err(|e| StartError::Shard {
                shard: id,
                reason: e.to_string(),
            })?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..total {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err((shard, reason))) => return Err(StartError::Shard { shard, reason }),
            Err(_) => {
                return Err(StartError::Shard {
                    shard: 0,
                    reason: "a shard exited during start-up".into(),
                })
            }
        }
    }
    Ok(Running {
        addr,
        tls_addr,
        stop,
        handles,
        stats,
    })
}

/// The CPUs this process may run on, in order (shards and the perf harness
/// pin their executors to them).
pub fn core_ids() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills the set we pass.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let ok =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) }
            == 0;
    if !ok {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        .filter(|c| unsafe { libc::CPU_ISSET(*c, &set) })
        .collect()
}

/// What one shard's tasks share (single-threaded: `Rc`/`RefCell`, no locks).
struct Runtime {
    id: usize,
    shard: RefCell<Shard>,
    producers: RefCell<Vec<Option<rtrb::Producer<ShardMsg>>>>,
    bells: Vec<Option<ConnectedSender<()>>>,
    /// Wakes each connection's task when it has new output.
    writers: RefCell<HashMap<u64, LocalSender<()>>>,
    /// Some outbox could not go onto a full ring; retry soon.
    overflow: Cell<bool>,
    dirty: RefCell<Vec<u64>>,
    /// Connections of the whole broker (`max-connections`).
    conn_count: Arc<AtomicUsize>,
    /// Files the shard's disk operations write, kept open.
    files: RefCell<HashMap<std::path::PathBuf, Rc<OpenFile>>>,
    /// The CPU of every poll of the shard's tasks (`stall-threshold`).
    stalls: Rc<StallWatch>,
    /// Wakes the task that dispatches the next batch of queues that stopped
    /// at `DISPATCH_BATCH`.
    dispatch_more: LocalSender<()>,
}

impl Runtime {
    /// The shard's counters for the stats handle, with its rings' fill.
    fn snapshot(&self) -> crate::stats::ShardSnapshot {
        let mut snapshot = self.shard.borrow().snapshot();
        snapshot.rings = self
            .producers
            .borrow()
            .iter()
            .enumerate()
            .filter_map(|(to, p)| {
                let p = p.as_ref()?;
                let capacity = p.buffer().capacity();
                Some((to, capacity - p.slots(), capacity))
            })
            .collect();
        snapshot
    }

    /// After any change to shard state: process local messages, move outboxes onto
    /// rings (ringing each doorbell once), wake writers with output.
    fn after_step(self: &Rc<Self>) {
        let mut shard = self.shard.borrow_mut();
        shard.run_local();
        let mut producers = self.producers.borrow_mut();
        for (to, producer) in producers.iter_mut().enumerate() {
            let Some(producer) = producer else { continue };
            let outbox = shard.outbox_for(to);
            let mut pushed = false;
            while let Some(msg) = outbox.pop_front() {
                match producer.push(msg) {
                    Ok(()) => pushed = true,
                    Err(rtrb::PushError::Full(msg)) => {
                        outbox.push_front(msg);
                        self.overflow.set(true);
                        break;
                    }
                }
            }
            if pushed {
                if let Some(bell) = &self.bells[to] {
                    let _ = bell.try_send(());
                }
            }
        }
        if shard.wants_to_dispatch() {
            let _ = self.dispatch_more.try_send(());
        }
        let arrivals = shard.take_arrivals();
        let disk_ops = shard.take_disk_ops();
        let mut dirty = self.dirty.borrow_mut();
        shard.take_dirty(&mut dirty);
        let writers = self.writers.borrow();
        for id in dirty.drain(..) {
            if let Some(w) = writers.get(&id) {
                let _ = w.try_send(());
            }
        }
        drop(writers);
        drop(dirty);
        drop(producers);
        drop(shard);
        for (token, op) in disk_ops {
            glommio::spawn_local(watched(
                self.stalls.clone(),
                self.stalls.label(|| format!("disk operation {token}")),
                perform(self.clone(), token, op),
            ))
            .detach();
        }
        for a in arrivals {
            // SAFETY: the descriptor was duplicated for this arrival by the
            // shard that handed the connection over; it is ours alone now.
            let stream = unsafe { TcpStream::from_raw_fd(a.fd) };
            tracing::debug!(shard = self.id, conn = a.id, "adopted a connection");
            let conn_count = self.conn_count.clone();
            run_connection(self, a.id, stream, a.transport, conn_count, a.leftover);
        }
    }
}

/// A file the journal writes: with O_DIRECT where the filesystem allows it
/// (tmpfs does not), else through the page cache; both on io_uring.
enum OpenFile {
    Direct(glommio::io::DmaFile),
    Buffered(glommio::io::BufferedFile),
}

/// Performs a disk operation and tells the shard how it ended.
async fn perform(rt: Rc<Runtime>, token: u64, op: crate::disk::DiskOp) {
    use crate::disk::DiskOp;
    let result = match op {
        DiskOp::Write {
            path,
            offset,
            data,
            sync,
        } => write_at(&rt, &path, offset, data, sync)
            .await
            .map_err(|e| format!("writing {}: {e}", path.display())),
        DiskOp::Replace { path, data } => {
            let shown = path.display().to_string();
            glommio::executor()
                .spawn_blocking(move || crate::disk::replace_file(&path, &data))
                .await
                .map_err(|e| format!("replacing {shown}: {e}"))
        }
        DiskOp::Remove { path } => {
            rt.files.borrow_mut().remove(&path);
            let shown = path.display().to_string();
            glommio::executor()
                .spawn_blocking(move || match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                })
                .await
                .map_err(|e| format!("removing {shown}: {e}"))
        }
    };
    {
        let mut shard = rt.shard.borrow_mut();
        shard.set_now(Instant::now());
        shard.disk_done(token, result);
    }
    rt.after_step();
}

async fn write_at(
    rt: &Rc<Runtime>,
    path: &std::path::Path,
    offset: u64,
    data: Bytes,
    sync: bool,
) -> std::io::Result<()> {
    let existing = rt.files.borrow().get(path).cloned();
    let file = match existing {
        Some(f) => f,
        None => {
            let mut options = glommio::io::OpenOptions::new();
            options.read(true).write(true).create(true);
            let file = match options.dma_open(path).await {
                Ok(f) => OpenFile::Direct(f),
                Err(_) => OpenFile::Buffered(options.buffered_open(path).await?),
            };
            let file = Rc::new(file);
            rt.files.borrow_mut().insert(path.to_owned(), file.clone());
            file
        }
    };
    let written = match &*file {
        OpenFile::Direct(f) => {
            let mut buf = f.alloc_dma_buffer(data.len());
            buf.as_bytes_mut().copy_from_slice(&data);
            let n = f.write_at(buf, offset).await?;
            if sync {
                f.fdatasync().await?;
            }
            n
        }
        OpenFile::Buffered(f) => {
            let n = f.write_at(data.to_vec(), offset).await?;
            if sync {
                f.fdatasync().await?;
            }
            n
        }
    };
    if written != data.len() {
        return Err(std::io::Error::other(format!(
            "short write: {written} of {} bytes",
            data.len()
        )));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn shard_main(
    id: usize,
    settings: Arc<BrokerSettings>,
    listener_fd: Option<i32>,
    tls_fd: Option<i32>,
    outgoing: Vec<Option<(rtrb::Producer<ShardMsg>, SharedSender<()>)>>,
    incoming: Vec<Option<(rtrb::Consumer<ShardMsg>, SharedReceiver<()>)>>,
    stop: Arc<AtomicBool>,
    conn_count: Arc<AtomicUsize>,
    ready: mpsc::Sender<Result<usize, (usize, String)>>,
    extension: Option<ExtensionFactory>,
    stats: StatsHandle,
    stalls: Rc<StallWatch>,
) {
    // SAFETY: the fd is a listening socket we created and handed over.
    // (The service shard has none: its connections come by handover.)
    let listener = listener_fd.map(|fd| unsafe { TcpListener::from_raw_fd(fd) });
    // SAFETY: as above, for the TLS port's listener.
    let tls_listener = tls_fd.map(|fd| unsafe { TcpListener::from_raw_fd(fd) });
    // Connecting a shared channel waits for the other side to connect too, so the
    // receiving ends connect in their own tasks before we connect our senders.
    let rt_slot: Rc<RefCell<Option<Rc<Runtime>>>> = Rc::new(RefCell::new(None));
    let (rt_ready_tx, rt_ready_rx) = local_channel::new_bounded::<()>(1);
    let rt_ready_rx = Rc::new(rt_ready_rx);
    for (from, slot) in incoming.into_iter().enumerate() {
        let Some((mut ring, bell)) = slot else {
            continue;
        };
        let rt_slot = rt_slot.clone();
        let rt_ready = rt_ready_rx.clone();
        let what = stalls.label(|| format!("ring from shard {from}"));
        glommio::spawn_local(watched(stalls.clone(), what, async move {
            let bell = bell.connect().await;
            let rt = loop {
                if let Some(rt) = rt_slot.borrow().clone() {
                    break rt;
                }
                if rt_ready.recv().await.is_none() {
                    // Closed: the runtime is set now, or start-up failed.
                    match rt_slot.borrow().clone() {
                        Some(rt) => break rt,
                        None => return,
                    }
                }
            };
            while bell.recv().await.is_some() {
                // Drain the ring, yielding to the shard's other tasks after
                // every RING_BATCH messages.
                loop {
                    let mut taken = 0;
                    {
                        let mut shard = rt.shard.borrow_mut();
                        shard.set_now(Instant::now());
                        while taken < RING_BATCH {
                            let Ok(msg) = ring.pop() else { break };
                            shard.on_shard_msg(msg);
                            taken += 1;
                        }
                    }
                    rt.after_step();
                    if taken < RING_BATCH {
                        break;
                    }
                    futures_lite::future::yield_now().await;
                }
            }
            tracing::debug!(shard = rt.id, from, "ring closed");
        }))
        .detach();
    }
    let mut producers = Vec::new();
    let mut bells = Vec::new();
    for slot in outgoing {
        match slot {
            Some((p, bell)) => {
                producers.push(Some(p));
                bells.push(Some(bell.connect().await));
            }
            None => {
                producers.push(None);
                bells.push(None);
            }
        }
    }
    let mut shard = Shard::new(id, settings.clone(), Instant::now());
    shard.set_dispatch_batch(DISPATCH_BATCH);
    let (dispatch_more, more_to_dispatch) = local_channel::new_bounded(1);
    let has_ext = extension.is_some();
    if let Some(factory) = extension {
        shard.set_extension(factory(id));
    }
    let rt = Rc::new(Runtime {
        id,
        shard: RefCell::new(shard),
        producers: RefCell::new(producers),
        bells,
        writers: RefCell::new(HashMap::new()),
        overflow: Cell::new(false),
        dirty: RefCell::new(Vec::new()),
        conn_count: conn_count.clone(),
        files: RefCell::new(HashMap::new()),
        stalls: stalls.clone(),
        dispatch_more,
    });
    // The next batch of a queue's deliveries, once the shard's other tasks
    // had a turn.
    let more = rt.clone();
    let what = stalls.label(|| "dispatch".into());
    glommio::spawn_local(watched(stalls.clone(), what, async move {
        while more_to_dispatch.recv().await.is_some() {
            futures_lite::future::yield_now().await;
            {
                let mut shard = more.shard.borrow_mut();
                shard.set_now(Instant::now());
                shard.dispatch_more();
            }
            more.after_step();
        }
    }))
    .detach();
    *rt_slot.borrow_mut() = Some(rt.clone());
    drop(rt_ready_tx);
    // Published before the shard says it runs, so that a reader (the HTTP
    // listener's /health) finds every shard from the start.
    stats.publish(rt.snapshot());
    let _ = ready.send(Ok(id));
    tracing::debug!(shard = id, "shard running");

    let housekeeping_count = conn_count.clone();
    if let Some(listener) = listener {
        let accept = accept_loop(rt.clone(), listener, None, stop.clone());
        let what = stalls.label(|| "accept".into());
        glommio::spawn_local(watched(stalls.clone(), what, accept)).detach();
    }
    if let (Some(listener), Some(tls)) = (tls_listener, settings.tls.clone()) {
        let config = Some(tls.server);
        let accept = accept_loop(rt.clone(), listener, config, stop.clone());
        let what = stalls.label(|| "accept (TLS)".into());
        glommio::spawn_local(watched(stalls.clone(), what, accept)).detach();
    }

    // Housekeeping: ring overflow retries, the HA role's timers, memory
    // release, the stop flag.
    let mut ticks: u32 = 0;
    let mut published = Instant::now();
    loop {
        let wait = if rt.overflow.get() {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(50)
        };
        glommio::timer::sleep(wait).await;
        if rt.overflow.replace(false) {
            rt.after_step();
        }
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(RELEASE_MEMORY_TICKS) && rt.shard.borrow_mut().memory_to_release() {
            // On glommio's blocking thread: the shard goes on meanwhile.
            let trim = glommio::executor().spawn_blocking(|| {
                #[cfg(target_env = "gnu")]
                // SAFETY: malloc_trim only walks the allocator's own free
                // lists, under its own locks; any thread may call it.
                unsafe {
                    libc::malloc_trim(0);
                }
            });
            glommio::spawn_local(trim).detach();
        }
        let now = Instant::now();
        if now.duration_since(published) >= PUBLISH_EVERY {
            published = now;
            let mut shard = rt.shard.borrow_mut();
            shard.set_now(now);
            shard.set_stalls(rt.stalls.figures());
            drop(shard);
            stats.publish(rt.snapshot());
        }
        if has_ext {
            rt.shard.borrow_mut().poll_extension(Instant::now());
            rt.after_step();
            let connects = rt.shard.borrow_mut().take_connection_requests();
            for (token, address, timeout) in connects {
                let what = rt
                    .stalls
                    .label(|| format!("outgoing connection to {address}"));
                glommio::spawn_local(watched(
                    rt.stalls.clone(),
                    what,
                    connect_owned(
                        rt.clone(),
                        token,
                        address,
                        timeout,
                        housekeeping_count.clone(),
                    ),
                ))
                .detach();
            }
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    let ids = rt.shard.borrow().conn_ids();
    for cid in ids {
        rt.shard.borrow_mut().conn_close(
            cid,
            ErrorCondition::new(condition::CONNECTION_FORCED, "broker is shutting down"),
        );
    }
    rt.after_step();
    let deadline = Instant::now() + CLOSE_GRACE;
    while rt.shard.borrow().connection_count() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// Accepts connections on `listener` until the broker stops: plain ones, or
/// with `tls`, the server side of TLS.
async fn accept_loop(
    rt: Rc<Runtime>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: Arc<AtomicBool>,
) {
    let conn_count = rt.conn_count.clone();
    let max = rt.shard.borrow().settings.max_connections;
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(shard = rt.id, "accept failed: {e}");
                continue;
            }
        };
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if conn_count.fetch_add(1, Ordering::Relaxed) >= max {
            conn_count.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!("connection refused: max-connections ({max}) reached");
            continue;
        }
        let transport = match &tls {
            None => Transport::Plain,
            Some(config) => match Transport::tls_server(config) {
                Ok(t) => t,
                Err(e) => {
                    conn_count.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!(shard = rt.id, "TLS connection refused: {e}");
                    continue;
                }
            },
        };
        serve(&rt, stream, transport, conn_count.clone());
    }
}

/// Starts the reader and writer tasks of a new connection (carried by
/// `transport`: plain, or the server side of TLS).
fn serve(rt: &Rc<Runtime>, stream: TcpStream, transport: Transport, conn_count: Arc<AtomicUsize>) {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let id = {
        let mut shard = rt.shard.borrow_mut();
        shard.set_now(Instant::now());
        let encrypted = matches!(transport, Transport::Tls(_));
        shard.accept_connection_on(peer.clone(), encrypted)
    };
    tracing::debug!(shard = rt.id, conn = id, %peer, "accepted");
    run_connection(rt, id, stream, transport, conn_count, BytesMut::new());
}

/// Starts the task that carries connection `id` between its socket and its
/// engine.
fn run_connection(
    rt: &Rc<Runtime>,
    id: u64,
    stream: TcpStream,
    transport: Transport,
    conn_count: Arc<AtomicUsize>,
    unread: BytesMut,
) {
    let (wake_tx, wake_rx) = local_channel::new_bounded(1);
    rt.writers.borrow_mut().insert(id, wake_tx);
    let what = rt.stalls.label(|| match rt.shard.borrow().conn_peer(id) {
        Some(peer) => format!("connection {id} ({peer})"),
        None => format!("connection {id}"),
    });
    let task = connection_task(
        rt.clone(),
        id,
        stream,
        transport,
        wake_rx,
        conn_count,
        unread,
    );
    glommio::spawn_local(watched(rt.stalls.clone(), what, task)).detach();
}

/// A connection the extension asked for (a backup's replication link):
/// resolve and connect, then serve it like any other, with the engine the
/// extension gives it.
async fn connect_owned(
    rt: Rc<Runtime>,
    token: u64,
    address: String,
    timeout: Duration,
    conn_count: Arc<AtomicUsize>,
) {
    // `ssl:host:port` is TLS, verifying the peer against the CA.
    let (tls, target) = match address.strip_prefix("ssl:") {
        Some(rest) => (true, rest.to_owned()),
        None => (false, address.clone()),
    };
    let transport = if tls {
        let client = rt
            .shard
            .borrow()
            .settings
            .tls
            .as_ref()
            .and_then(|t| t.client.clone());
        let host = target
            .rsplit_once(':')
            .map_or(target.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        match client.map(|c| Transport::tls_client(&c, &host)) {
            Some(Ok(t)) => t,
            failed => {
                let why = match failed {
                    Some(Err(e)) => e,
                    _ => "ssl: addresses need ssl-cert-file, ssl-key-file and ssl-ca-file (the CA to verify the peer)".into(),
                };
                tracing::warn!("cannot connect to {address}: {why}");
                rt.shard.borrow_mut().connection_failed(token);
                rt.after_step();
                return;
            }
        }
    } else {
        Transport::Plain
    };
    // Name resolution blocks (getaddrinfo): it runs on glommio's blocking
    // thread pool, never on the executor.
    let name = target.clone();
    let resolved = glommio::executor()
        .spawn_blocking(move || {
            std::net::ToSocketAddrs::to_socket_addrs(&name.as_str())
                .ok()
                .and_then(|mut a| a.next())
        })
        .await;
    let stream = match resolved {
        Some(addr) => TcpStream::connect_timeout(addr, timeout).await,
        None => Err(glommio::GlommioError::IoError(std::io::Error::other(
            "cannot resolve",
        ))),
    };
    let stream = match stream {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("cannot reach {address}: {e}");
            rt.shard.borrow_mut().connection_failed(token);
            rt.after_step();
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let opened = {
        let mut shard = rt.shard.borrow_mut();
        shard.set_now(Instant::now());
        shard.connection_opened(token, address.clone())
    };
    let Some(id) = opened else {
        return;
    };
    conn_count.fetch_add(1, Ordering::Relaxed);
    run_connection(&rt, id, stream, transport, conn_count, BytesMut::new());
    rt.after_step();
}

/// What woke a connection's task.
enum Woke {
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
    Output,
    Timer,
}

/// A read and a write on one socket at once: whichever the socket allows
/// first (both register for readiness, so the task wakes for either).
struct ReadOrWrite<'a> {
    stream: &'a mut TcpStream,
    /// `None` once the socket reached end of file.
    read: Option<&'a mut [u8]>,
    write: &'a [u8],
}

impl std::future::Future for ReadOrWrite<'_> {
    type Output = Woke;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Woke> {
        use futures_lite::{AsyncRead, AsyncWrite};
        use std::task::Poll;
        let this = self.get_mut();
        if let Some(buf) = this.read.as_deref_mut() {
            if let Poll::Ready(r) = std::pin::Pin::new(&mut *this.stream).poll_read(cx, buf) {
                return Poll::Ready(Woke::Read(r));
            }
        }
        match std::pin::Pin::new(&mut *this.stream).poll_write(cx, this.write) {
            Poll::Ready(r) => Poll::Ready(Woke::Wrote(r)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// One connection's task, both directions on one socket: while output is
/// being written, socket input is read too (a write and a read race, each
/// taking what the socket allows); when there is no output it waits for input,
/// new output (a wake-up) or the engine's next timer. Neither a read nor a
/// write cut short loses anything: glommio does both when the socket is
/// ready, so a dropped one did nothing.
async fn connection_task(
    rt: Rc<Runtime>,
    id: u64,
    mut stream: TcpStream,
    mut transport: Transport,
    wake: LocalReceiver<()>,
    conn_count: Arc<AtomicUsize>,
    unread: BytesMut,
) {
    // Bytes a previous shard read and the engine has not consumed yet.
    let mut buf = unread;
    let mut closing_since: Option<Instant> = None;
    let mut at_eof = false;
    // Output being written, and how much of it is written.
    let mut sending: Option<(Bytes, usize)> = None;
    let mut moved_since_yield = 0usize;
    let mut last_read: usize = 0;
    loop {
        if moved_since_yield >= YIELD_AFTER_BYTES {
            moved_since_yield = 0;
            futures_lite::future::yield_now().await;
        }
        if sending.is_none() {
            let out = rt.shard.borrow_mut().conn_output(id);
            sending = out
                .map(|bytes| transport.to_send(bytes))
                .or_else(|| transport.pending())
                .map(|bytes| (bytes, 0));
        }
        let mut wait = Duration::ZERO;
        if sending.is_none() {
            if rt.shard.borrow().conn_closed(id) {
                break;
            }
            let now = Instant::now();
            if rt.shard.borrow().conn_closing(id) {
                let since = *closing_since.get_or_insert(now);
                if now.duration_since(since) > CLOSE_GRACE {
                    break;
                }
            }
            let deadline = rt.shard.borrow_mut().conn_tick(id, now);
            rt.after_step();
            if rt.shard.borrow().conn_has_output(id) {
                continue; // the tick wrote a heartbeat or a close
            }
            wait = deadline
                .map(|d| d.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(1))
                .clamp(Duration::from_millis(1), Duration::from_secs(1));
        }
        let raw = transport.read_buffer(&mut buf);
        if raw.capacity() - raw.len() < 8 * 1024 {
            raw.reserve(64 * 1024);
        }
        let start = raw.len();
        // The room offered is zeroed first: a 64 KiB memset for every 2 KiB
        // read cost a backup's stream more than the read, and an idle
        // connection's zeroed room stays resident. Offer twice the last read
        // (at least MIN_READ_ROOM), so a busy socket still fills 64 KiB after
        // a few reads.
        let room = (raw.capacity() - start).min(last_read.saturating_mul(2).max(MIN_READ_ROOM));
        raw.resize(start + room, 0);
        let woke = match &sending {
            Some((bytes, off)) => {
                ReadOrWrite {
                    stream: &mut stream,
                    read: (!at_eof).then_some(&mut raw[start..]),
                    write: &bytes[*off..],
                }
                .await
            }
            None => {
                let read = async {
                    if at_eof {
                        std::future::pending::<()>().await;
                    }
                    Woke::Read(stream.read(&mut raw[start..]).await)
                };
                let output = async {
                    wake.recv().await;
                    Woke::Output
                };
                let timer = async {
                    glommio::timer::sleep(wait).await;
                    Woke::Timer
                };
                futures_lite::future::or(read, futures_lite::future::or(output, timer)).await
            }
        };
        let n = match woke {
            Woke::Read(Ok(n)) => n,
            Woke::Read(Err(e)) => {
                // Taken as the end of the connection, but said: a reset and a
                // clean close are different stories for an operator.
                tracing::warn!(shard = rt.id, conn = id, "socket read failed: {e}");
                0
            }
            Woke::Wrote(Ok(0)) | Woke::Wrote(Err(_)) => break,
            Woke::Wrote(Ok(n)) => {
                moved_since_yield += n;
                raw.truncate(start);
                if let Some((bytes, off)) = sending.as_mut() {
                    *off += n;
                    if *off >= bytes.len() {
                        sending = None;
                        rt.shard.borrow_mut().conn_wrote(id, Instant::now());
                    }
                }
                continue;
            }
            Woke::Output | Woke::Timer => {
                raw.truncate(start);
                continue;
            }
        };
        raw.truncate(start + n);
        last_read = n;
        moved_since_yield += n;
        if n == 0 {
            at_eof = true;
            rt.shard.borrow_mut().conn_eof(id);
            rt.after_step();
            continue;
        }
        let was_handshaking = transport.handshaking();
        let input = match transport.received(&mut buf) {
            Ok(input) => input,
            Err(e) => {
                let peer = rt.shard.borrow().conn_peer(id).unwrap_or_default();
                tracing::warn!(shard = rt.id, conn = id, %peer, "closing the connection: {e}");
                if let Some(alert) = transport.pending() {
                    let _ = stream.write_all(&alert).await;
                }
                break;
            }
        };
        if was_handshaking && !transport.handshaking() {
            // Before the engine reads what followed the handshake (SASL
            // EXTERNAL needs the certificate).
            let cert = transport.peer_certificate().map(<[u8]>::to_vec);
            rt.shard.borrow_mut().conn_tls_established(id, cert);
        }
        rt.shard.borrow_mut().conn_input(id, input, Instant::now());
        let leaving = rt.shard.borrow_mut().take_leaving(id);
        if let Some((to, handover)) = leaving {
            // The connection moves to shard `to`: its socket goes along (a
            // duplicate descriptor; ours closes when the stream drops), and
            // so do the bytes read but not consumed.
            rt.writers.borrow_mut().remove(&id);
            // SAFETY: dup of a valid open socket; the copy belongs to the arrival.
            let fd = unsafe { libc::dup(stream.as_raw_fd()) };
            if fd < 0 {
                tracing::warn!(
                    shard = rt.id,
                    conn = id,
                    "cannot hand the connection over: dup failed"
                );
                conn_count.fetch_sub(1, Ordering::Relaxed);
                rt.after_step();
                return;
            }
            let arrival = Arrival {
                handover,
                fd,
                leftover: std::mem::take(&mut buf),
                transport: std::mem::take(&mut transport),
            };
            rt.shard.borrow_mut().send_arrival(to, arrival);
            rt.after_step();
            return;
        }
        rt.after_step();
    }
    if let Some(goodbye) = transport.close() {
        let _ = stream.write_all(&goodbye).await;
    }
    let _ = stream.flush().await;
    // SAFETY: shutting down our own socket; the peer sees the end at once.
    unsafe {
        libc::shutdown(stream.as_raw_fd(), libc::SHUT_RDWR);
    }
    rt.shard.borrow_mut().remove_connection(id);
    rt.writers.borrow_mut().remove(&id);
    rt.after_step();
    conn_count.fetch_sub(1, Ordering::Relaxed);
}
