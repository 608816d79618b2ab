//! A simulated cluster of the real code: every broker is its real [`Shard`]s
//! with the real HA role ([`HaBroker`]) on shard 0, exactly as `tandemd` builds
//! them; only the runtime is replaced. Shard rings are FIFO queues, sockets are
//! in-memory pipes between real connection engines, and time is a virtual
//! clock advanced in fixed steps. Clients are real client engines that publish
//! and consume numbered messages and fail over as Proton does (next address
//! after a dropped connection, unsettled messages sent again).
//!
//! Faults: `kill` (kill -9: every socket of the broker closes), `stall`
//! (SIGSTOP: nothing moves, bytes wait in the pipes), `resume`, `restart` (a
//! new process with a new broker id). A test-driven [`Peer`] engine can stand
//! in for a broker to feed a backup whatever stream a test needs.
//!
//! Runs are deterministic: the only randomness (which shard accepts a
//! connection, the publish schedule) comes from a seeded [`Rng`].

// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod schedule;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tandem_ha::broker::{ClusterInfo, HaBroker};
use tandem_ha::node::HaSettings;
use tandem_ha::role::HaHandler;
use tandem_ha::stream::StreamSettings;
use tandem_shards::amqp::codec::Value;
use tandem_shards::amqp::connection::{Connection, ConnectionConfig, Event, LinkKey, Sasl};
use tandem_shards::amqp::message::{DecodedMessage, MessageBuilder};
use tandem_shards::amqp::performative::{Attach, DeliveryState, Role, Source, Target};
use tandem_shards::broker::admission::Admission;
use tandem_shards::broker::{BrokerSettings, Shard};
use tandem_shards::disk::DiskOp;
use tandem_shards::management::{Request, Response};
use tandem_store::ext::StoreSettings;
use tandem_store::mem_disk::MemDisk;

/// One step of the virtual clock.
pub const STEP: Duration = Duration::from_millis(10);
/// `link-heartbeat-interval`: silence for twice this drops a peer.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// `ha-backup-timeout`.
pub const BACKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// `link-maintenance-interval`.
pub const MAINTENANCE: Duration = Duration::from_millis(100);
/// Bytes a pipe carries each way per step (25 MB/s), so that catching up on
/// a long queue takes visible time.
pub const BANDWIDTH: usize = 256 * 1024;
/// How long the runtime waits for a peer's close before dropping the socket
/// (`runtime::CLOSE_GRACE`).
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A small deterministic generator (xorshift64*), seeded per run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Health {
    Up,
    /// SIGSTOP: alive but nothing runs; bytes wait in the pipes.
    Stalled,
    /// kill -9.
    Dead,
}

/// One broker process.
pub struct Broker {
    pub shards: Vec<Shard>,
    pub health: Health,
    pub broker_id: String,
    /// Disk operations asked for and not finished yet, in order: when each
    /// is done, shard, token, op.
    disk_ops: VecDeque<(Instant, usize, u64, DiskOp)>,
}

/// One side of a pipe.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum End {
    Shard {
        broker: usize,
        shard: usize,
        conn: u64,
    },
    Client(usize),
    Peer(usize),
}

/// A socket pair: bytes written by side `i` wait in `held[i]` (with when
/// they were written) until side `1 - i` runs and reads them into
/// `rx[1 - i]`.
struct Pipe {
    ends: [End; 2],
    held: [Vec<(Instant, Bytes)>; 2],
    rx: [BytesMut; 2],
    /// Bytes side `i` may still send this step.
    budget: [usize; 2],
    /// Since when side `i` waits for the peer's close.
    closing_since: [Option<Instant>; 2],
    /// Side `i` left all of `rx[i]` unread last time: it is fed again only
    /// when more bytes arrive (as a socket wakes its reader).
    unread: [bool; 2],
}

/// What a client does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Publisher,
    Consumer,
}

/// A client with its own engine, failing over between the brokers in order.
pub struct Client {
    pub kind: Kind,
    queue: String,
    engine: Option<Connection>,
    /// The broker it is connected (or connecting) to.
    pub broker: usize,
    channel: u16,
    link: Option<LinkKey>,
    /// Publisher: numbers to send (again) before new ones.
    unsent: VecDeque<u64>,
    /// Publisher: next new number, and how many to publish in all.
    next_seq: u64,
    /// Publisher: the first number it sends (then up to `limit`).
    first: u64,
    /// Publisher: how many to publish; consumer: how many to take, about
    /// (credit stops once it received that many; 0: no end).
    pub limit: u64,
    /// Publisher: most new messages per step (`None`: as credit allows).
    pub per_step: Option<u64>,
    /// Publisher: bytes of padding in each message.
    pub padding: usize,
    /// Publisher: messages marked durable.
    pub durable: bool,
    sent_this_step: u64,
    /// Publisher: delivery id -> number.
    unsettled: HashMap<u32, u64>,
    /// Publisher: numbers the broker accepted (settled).
    pub settled: BTreeSet<u64>,
    /// Publisher: the conditions of the rejections it was sent (each
    /// rejected number is sent again).
    pub rejected: Vec<String>,
    /// Consumer: numbers received, in order, duplicates included.
    pub received: Vec<u64>,
    /// Connections made.
    pub connects: usize,
    /// Steps to wait before the next connection attempt.
    backoff: u32,
    /// The virtual time, as of the input being handled.
    now: Option<Instant>,
    /// Publisher: how many times it sent each number again (after a lost
    /// connection, a rejection or a release).
    pub resent: BTreeMap<u64, u32>,
    /// Publisher: when each settlement arrived, and from which broker.
    pub settlements: Vec<(Instant, usize)>,
    /// Consumer: where in `received` the current connection began.
    connection_start: usize,
    /// Consumer: the last [`CONSUMER_CREDIT`] numbers received on each
    /// connection that was lost (how many such connections each was in):
    /// what it may have accepted without the broker hearing so, so may get
    /// again.
    pub unacknowledged_at_loss: BTreeMap<u64, u32>,
}

/// The credit a consumer keeps granting (its in-flight window).
pub const CONSUMER_CREDIT: u32 = 100;

impl Client {
    fn new(kind: Kind, queue: &str, limit: u64) -> Client {
        Client {
            kind,
            queue: queue.into(),
            engine: None,
            broker: 0,
            channel: 0,
            link: None,
            unsent: VecDeque::new(),
            next_seq: 1,
            first: 1,
            limit,
            per_step: None,
            padding: 0,
            durable: false,
            sent_this_step: 0,
            unsettled: HashMap::new(),
            settled: BTreeSet::new(),
            rejected: Vec::new(),
            received: Vec::new(),
            connects: 0,
            backoff: 0,
            now: None,
            resent: BTreeMap::new(),
            settlements: Vec::new(),
            connection_start: 0,
            unacknowledged_at_loss: BTreeMap::new(),
        }
    }

    /// Publisher: numbers from `first` to `last` instead of from 1.
    pub fn numbered(&mut self, first: u64, last: u64) {
        self.first = first;
        self.next_seq = first;
        self.limit = last;
    }

    /// Publisher: every number it sends was settled.
    pub fn all_settled(&self) -> bool {
        self.settled.len() as u64 == (self.limit + 1).saturating_sub(self.first)
    }

    /// Numbers sent and not settled, waiting to go (again).
    pub fn outstanding(&self) -> usize {
        self.unsent.len() + self.unsettled.len()
    }

    /// The client's state, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "connected to {} {} (link {:?}), {} connections, next {} of {}, {} settled, {} unsent, {} unsettled",
            self.broker,
            self.engine.is_some(),
            self.link,
            self.connects,
            self.next_seq,
            self.limit,
            self.settled.len(),
            self.unsent.len(),
            self.unsettled.len()
        )
    }

    /// The connection dropped: the next attempt goes to the next broker.
    fn lost(&mut self) {
        self.engine = None;
        self.broker += 1;
        self.link = None;
        let window = self.received.len().saturating_sub(CONSUMER_CREDIT as usize);
        let start = self.connection_start.max(window);
        for &n in &self.received[start.min(self.received.len())..] {
            *self.unacknowledged_at_loss.entry(n).or_default() += 1;
        }
        self.connection_start = self.received.len();
        let mut again: Vec<u64> = self.unsettled.drain().map(|(_, s)| s).collect();
        for &n in &again {
            *self.resent.entry(n).or_default() += 1;
        }
        again.sort_unstable();
        for s in again.into_iter().rev() {
            self.unsent.push_front(s);
        }
        self.backoff = 5;
    }

    fn on_event(&mut self, ev: Event) {
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        match ev {
            Event::Opened(_) => self.channel = engine.begin(),
            Event::Begun { channel } => {
                let (role, source, target) = match self.kind {
                    Kind::Publisher => (
                        Role::Sender,
                        Source::default(),
                        Target {
                            address: Some(self.queue.clone()),
                            ..Default::default()
                        },
                    ),
                    Kind::Consumer => (
                        Role::Receiver,
                        Source {
                            address: Some(self.queue.clone()),
                            ..Default::default()
                        },
                        Target::default(),
                    ),
                };
                self.link = engine.attach(channel, attach(&self.queue, role, source, target));
            }
            Event::Attached { link, attach } => {
                let refused = match self.kind {
                    Kind::Publisher => attach.target.is_none(),
                    Kind::Consumer => attach.source.is_none(),
                };
                if refused {
                    engine.close(None);
                } else if self.kind == Kind::Consumer && wants_more(self.limit, &self.received) {
                    engine.grant_credit(link, CONSUMER_CREDIT, false);
                }
            }
            Event::Transfer {
                link,
                delivery_id,
                settled,
                payload,
                ..
            } => {
                let number = DecodedMessage::decode(&payload)
                    .ok()
                    .and_then(|m| m.body)
                    .and_then(|b| b.as_u64());
                if let Some(n) = number {
                    self.received.push(n);
                }
                if !settled {
                    engine.disposition(
                        link.channel,
                        Role::Receiver,
                        delivery_id,
                        delivery_id,
                        true,
                        Some(&DeliveryState::Accepted),
                    );
                }
                if engine.credit(link) < CONSUMER_CREDIT / 2
                    && wants_more(self.limit, &self.received)
                {
                    engine.grant_credit(link, CONSUMER_CREDIT, false);
                }
            }
            Event::Disposition { disposition, .. } if disposition.settled => {
                let last = disposition.last.unwrap_or(disposition.first);
                let mut id = disposition.first;
                loop {
                    if let Some(n) = self.unsettled.remove(&id) {
                        match disposition.state {
                            Some(DeliveryState::Accepted) => {
                                self.settled.insert(n);
                                if let Some(now) = self.now {
                                    self.settlements.push((now, self.broker));
                                }
                            }
                            Some(DeliveryState::Rejected(ref error)) => {
                                self.rejected.push(
                                    error
                                        .as_ref()
                                        .map(|e| e.condition.to_string())
                                        .unwrap_or_default(),
                                );
                                self.unsent.push_back(n);
                                *self.resent.entry(n).or_default() += 1;
                            }
                            _ => {
                                self.unsent.push_back(n);
                                *self.resent.entry(n).or_default() += 1;
                            }
                        }
                    }
                    if id == last {
                        break;
                    }
                    id = id.wrapping_add(1);
                }
            }
            Event::Detached { .. } | Event::Ended { .. } => engine.close(None),
            _ => {}
        }
    }

    /// Sends what credit and the schedule allow.
    fn publish(&mut self) {
        let (Kind::Publisher, Some(engine), Some(link)) =
            (self.kind, self.engine.as_mut(), self.link)
        else {
            return;
        };
        while engine.credit(link) > 0 {
            let n = match self.unsent.front() {
                Some(&n) => n,
                None if self.next_seq <= self.limit
                    && self.per_step.is_none_or(|max| self.sent_this_step < max) =>
                {
                    self.next_seq
                }
                None => break,
            };
            let payload = MessageBuilder {
                durable: self.durable,
                body: Some(Value::Ulong(n)),
                application_properties: (self.padding > 0)
                    .then(|| {
                        (
                            "padding".to_owned(),
                            Value::String("x".repeat(self.padding)),
                        )
                    })
                    .into_iter()
                    .collect(),
                ..Default::default()
            }
            .encode();
            let Some(id) = engine.send(link, &n.to_be_bytes(), &payload, false) else {
                break;
            };
            if self.unsent.front() == Some(&n) {
                self.unsent.pop_front();
            } else {
                self.next_seq += 1;
                self.sent_this_step += 1;
            }
            self.unsettled.insert(id, n);
        }
    }
}

fn attach(name: &str, role: Role, source: Source, target: Target) -> Attach {
    Attach::new(
        format!("sim-{name}-{role:?}"),
        role,
        Some(source),
        Some(target),
    )
}

fn client_config(properties: Option<Value>) -> ConnectionConfig {
    ConnectionConfig {
        container_id: "sim-client".into(),
        max_frame_size: 65536,
        channel_max: 16,
        idle_timeout: None,
        properties,
        max_message_size: 1 << 20,
        hostname: None,
        sasl: Sasl::Client {
            credentials: None,
            skip: false,
        },
    }
}

/// A test-driven engine standing in for a broker at an address of the
/// cluster: the test reads its events and makes it answer.
pub struct Peer {
    pub address: String,
    pub engine: Option<Connection>,
    pub events: Vec<Event>,
    /// The peer's connection was closed by the other side.
    pub closed: bool,
}

pub struct Cluster {
    pub now: Instant,
    pub brokers: Vec<Broker>,
    pub clients: Vec<Client>,
    pub peers: Vec<Peer>,
    addresses: Vec<String>,
    shards_per_broker: usize,
    pipes: Vec<Pipe>,
    pub rng: Rng,
    /// Orders the rings' deliveries (apart from the test's own draws).
    ring_rng: Rng,
    pub seed: u64,
    /// Bytes each pipe carries each way per step ([`BANDWIDTH`] unless a test
    /// narrows it to make replication lag behind publishing).
    pub bandwidth: usize,
    restarts: usize,
    /// With a store: each broker's disk (it outlives the broker's process).
    disks: Option<Vec<MemDisk>>,
    /// `ha-replicate` of brokers started from now on, where not `all`.
    replicate: std::collections::HashMap<usize, String>,
    /// `ha-min-backups` and `ha-min-backups-timeout` of every broker.
    min_backups: usize,
    min_backups_timeout: Duration,
    /// Brokers cut off from the others by a network partition ([`Cluster::cut_off`]).
    pub cut: BTreeSet<usize>,
    /// Brokers whose links to the others are slow ([`Cluster::delay`]).
    delays: HashMap<usize, Duration>,
    /// Addresses of the stand-alone brokers after the members
    /// ([`Cluster::add_standalone`]), in order.
    standalone: Vec<String>,
}

/// Where a simulated broker with a store keeps its epoch file.
const EPOCH_FILE: &str = "/data/ha-epoch";

/// `node{i}:5672`, the replication address of broker `i`.
pub fn address(i: usize) -> String {
    format!("node{i}:5672")
}

impl Cluster {
    /// `n` brokers of `shards` shards each, all joining, none promoted.
    pub fn new(n: usize, shards: usize, seed: u64) -> Cluster {
        Cluster::build(n, shards, seed, false)
    }

    /// Like [`Cluster::new`], each broker with a persistent store on a disk of
    /// its own (queues are durable; a kill loses what was not synced and may
    /// tear the write that was running; a restart recovers the rest and keeps
    /// the broker id, as tandemd's data-dir does).
    pub fn with_store(n: usize, shards: usize, seed: u64) -> Cluster {
        Cluster::build(n, shards, seed, true)
    }

    /// `n` brokers (with a store if `store`), every one with
    /// `ha-min-backups = min` and `ha-min-backups-timeout = timeout`.
    pub fn with_store_and_min_backups(
        n: usize,
        shards: usize,
        seed: u64,
        store: bool,
        min: usize,
        timeout: Duration,
    ) -> Cluster {
        let mut c = Cluster::build(0, shards, seed, store);
        c.addresses = (0..n).map(address).collect();
        c.disks = store.then(|| (0..n).map(|_| MemDisk::new()).collect());
        c.min_backups = min;
        c.min_backups_timeout = timeout;
        for i in 0..n {
            let b = c.start_broker(i);
            c.brokers.push(b);
        }
        c
    }

    fn build(n: usize, shards: usize, seed: u64, store: bool) -> Cluster {
        let mut c = Cluster {
            now: Instant::now(),
            brokers: Vec::new(),
            clients: Vec::new(),
            peers: Vec::new(),
            addresses: (0..n).map(address).collect(),
            shards_per_broker: shards,
            pipes: Vec::new(),
            rng: Rng::new(seed),
            ring_rng: Rng::new(seed ^ 0x72696e67),
            seed,
            bandwidth: BANDWIDTH,
            restarts: 0,
            disks: store.then(|| (0..n).map(|_| MemDisk::new()).collect()),
            replicate: Default::default(),
            min_backups: 0,
            min_backups_timeout: Duration::from_secs(30),
            cut: BTreeSet::new(),
            delays: HashMap::new(),
            standalone: Vec::new(),
        };
        for i in 0..n {
            let b = c.start_broker(i);
            c.brokers.push(b);
        }
        c
    }

    /// Replaces the address list every broker is given (before they run), for
    /// tests that put a [`Peer`] at one of the addresses.
    pub fn with_addresses(n: usize, addresses: Vec<String>, seed: u64) -> Cluster {
        let mut c = Cluster::new(0, 1, seed);
        c.addresses = addresses;
        for i in 0..n {
            let b = c.start_broker(i);
            c.brokers.push(b);
        }
        c
    }

    /// Like [`Cluster::new`], every broker with `ha-min-backups = min` and
    /// `ha-min-backups-timeout = timeout`.
    pub fn with_min_backups(
        n: usize,
        shards: usize,
        seed: u64,
        min: usize,
        timeout: Duration,
    ) -> Cluster {
        let mut c = Cluster::new(0, shards, seed);
        c.addresses = (0..n).map(address).collect();
        c.min_backups = min;
        c.min_backups_timeout = timeout;
        for i in 0..n {
            let b = c.start_broker(i);
            c.brokers.push(b);
        }
        c
    }

    fn start_broker(&mut self, i: usize) -> Broker {
        let own = self.addresses.get(i).cloned().unwrap_or_else(|| address(i));
        // As tandemd runs a cluster broker: the workers and the replication
        // shard, which serves the backups' links (handed over to it).
        let mut settings = BrokerSettings {
            shards: self.shards_per_broker,
            service_shard: Some("repl-0".into()),
            container_id: format!("broker-{i}"),
            initial_admission: Admission::AdminOnly {
                reason: "backup broker (joining), not primary: try another address".into(),
            },
            ..Default::default()
        };
        let store = self.open_store(i, &mut settings);
        let settings = Arc::new(settings);
        // With a store the broker id is kept across restarts (tandemd keeps it
        // in data-dir); without, a restart is a new broker.
        let broker_id = match store {
            Some(_) => format!("broker-{i}"),
            None => format!("broker-{i}-{}", self.restarts),
        };
        // With a store the epoch and cluster id are kept too (data-dir/ha-epoch).
        let epoch_file = store.as_ref().map(|_| std::path::PathBuf::from(EPOCH_FILE));
        let known = self.known_epoch(i);
        let replicate = self
            .replicate
            .get(&i)
            .cloned()
            .unwrap_or_else(|| "all".into());
        let role = HaBroker::new(
            HaSettings {
                broker_id: broker_id.clone(),
                brokers: self.addresses.clone(),
                backup_timeout: BACKUP_TIMEOUT,
                min_backups: self.min_backups,
                heartbeat: HEARTBEAT,
                maintenance: MAINTENANCE,
                own_address: Some(own.clone()),
                initial_epoch: known.epoch,
                initial_cluster_id: known.cluster,
            },
            ClusterInfo {
                brokers_url: self.addresses.join(","),
                public_url: self.addresses.join(","),
                replicate: replicate.clone(),
                sync_config: false,
                self_address: own,
            },
            self.now,
        );
        // Built as tandemd builds it: one stream per shard, the role on shard 0.
        let stream = StreamSettings {
            replicate,
            username: None,
            password: None,
            mechanism: None,
            heartbeat: HEARTBEAT,
            min_backups_timeout: self.min_backups_timeout,
            epoch_file: epoch_file.clone(),
            cluster: true,
            queue_replication: true,
        };
        let roles = std::sync::Mutex::new(Some(role));
        let factory = tandem_ha::stream::extension(stream, move || {
            let role = roles.lock().ok().and_then(|mut r| r.take());
            Box::new(role.expect("one role per broker")) as Box<dyn HaHandler>
        });
        let factory = match store {
            Some((store, recovered)) => {
                tandem_store::ext::extension(store, recovered, Some(factory))
            }
            None => factory,
        };
        let shards: Vec<Shard> = (0..settings.total_shards())
            .map(|s| {
                let mut shard = Shard::new(s, settings.clone(), self.now);
                shard.set_extension(factory(s));
                shard
            })
            .collect();
        Broker {
            shards,
            health: Health::Up,
            broker_id,
            disk_ops: VecDeque::new(),
        }
    }

    /// With a store: the epoch and cluster id broker `i` last wrote.
    fn known_epoch(&self, i: usize) -> tandem_ha::epoch_file::Known {
        let Some(bytes) = self
            .disks
            .as_ref()
            .and_then(|d| d.get(i)?.read(Path::new(EPOCH_FILE)))
        else {
            return Default::default();
        };
        let text = String::from_utf8_lossy(&bytes);
        tandem_ha::epoch_file::decode(&text)
            .unwrap_or_else(|e| panic!("seed {}: broker {i}'s epoch file: {e}", self.seed))
    }

    /// With a store: what broker `i`'s disk holds, read back as tandemd does at
    /// start (durable configuration into `settings`, each worker's journal).
    fn open_store(
        &mut self,
        i: usize,
        settings: &mut BrokerSettings,
    ) -> Option<(StoreSettings, Vec<tandem_store::recovery::Recovered>)> {
        let disk = self.disks.as_ref()?.get(i)?;
        let store = StoreSettings {
            dir: "/store".into(),
            segment_size: 64 * 1024,
            sync: true,
        };
        settings.default_queue.durable = true;
        if let Some(bytes) = disk.read(&store.config_path()) {
            settings.initial_config = tandem_store::config_file::decode(&bytes)
                .unwrap_or_else(|e| panic!("seed {}: broker {i}'s configuration: {e}", self.seed));
        }
        let recovered = (0..settings.shards)
            .map(|s| {
                let segments = disk.segments(&store.shard_dir(s));
                tandem_store::recovery::recover(s as u32, segments, false).unwrap_or_else(|e| {
                    panic!("seed {}: broker {i} shard {s}'s journal: {e}", self.seed)
                })
            })
            .collect();
        Some((store, recovered))
    }

    /// The next `n` writes to broker `b`'s disk fail, as on a full disk.
    pub fn fail_disk_writes(&mut self, b: usize, n: usize) {
        if let Some(disk) = self.disks.as_mut().and_then(|d| d.get_mut(b)) {
            disk.fail_writes(n);
        }
    }

    /// Performs the disk operations that are due, in the order asked, and
    /// tells their shards.
    fn run_disks(&mut self) {
        let Some(disks) = self.disks.as_mut() else {
            return;
        };
        let now = self.now;
        for (b, broker) in self.brokers.iter_mut().enumerate() {
            if broker.health != Health::Up {
                continue;
            }
            while broker.disk_ops.front().is_some_and(|(due, ..)| *due <= now) {
                let Some((_, s, token, op)) = broker.disk_ops.pop_front() else {
                    break;
                };
                let result = disks[b].apply(&op);
                broker.shards[s].disk_done(token, result);
            }
        }
    }

    /// Collects the disk operations the shards asked for; each takes one to
    /// four steps (a seeded disk latency), in order.
    fn take_disk_ops(&mut self) {
        if self.disks.is_none() {
            return;
        }
        for broker in &mut self.brokers {
            for (s, shard) in broker.shards.iter_mut().enumerate() {
                for (token, op) in shard.take_disk_ops() {
                    let steps = 1 + self.ring_rng.below(4) as u32;
                    let after = broker.disk_ops.back().map_or(self.now, |(due, ..)| *due);
                    let due = after.max(self.now + STEP * steps);
                    broker.disk_ops.push_back((due, s, token, op));
                }
            }
        }
    }

    // -----------------------------------------------------------------------
    // Faults

    /// kill -9: the process is gone, every socket of it closes.
    pub fn kill(&mut self, b: usize) {
        self.brokers[b].health = Health::Dead;
        let running = std::mem::take(&mut self.brokers[b].disk_ops);
        if let Some(disk) = self.disks.as_mut().and_then(|d| d.get_mut(b)) {
            // The first write still running may be torn; the others never began.
            match running
                .into_iter()
                .find(|(_, _, _, op)| matches!(op, DiskOp::Write { .. }))
            {
                Some((_, _, _, op)) => {
                    let len = match &op {
                        DiskOp::Write { data, .. } => data.len() as u64,
                        _ => 0,
                    };
                    let torn = self.rng.below(len + 1) as usize;
                    disk.crash_during(&op, torn);
                }
                None => disk.crash(),
            }
        }
        let mut i = 0;
        while i < self.pipes.len() {
            let side = self.pipes[i]
                .ends
                .iter()
                .position(|e| matches!(e, End::Shard { broker, .. } if *broker == b));
            match side {
                Some(side) => {
                    let other = self.pipes[i].ends[1 - side];
                    self.pipes.swap_remove(i);
                    self.eof(other);
                }
                None => i += 1,
            }
        }
    }

    /// SIGSTOP.
    pub fn stall(&mut self, b: usize) {
        self.brokers[b].health = Health::Stalled;
    }

    /// SIGCONT. What waited in its sockets is read before its timers run (a
    /// woken process finds both due; the sockets are what this models).
    pub fn resume(&mut self, b: usize) {
        self.brokers[b].health = Health::Up;
        self.settle();
    }

    /// A network partition: broker `b` can no longer reach the other brokers
    /// nor they it (bytes between them wait, as unacknowledged TCP segments
    /// do; new connections between them fail). Clients still reach every
    /// broker.
    pub fn cut_off(&mut self, b: usize) {
        self.cut.insert(b);
    }

    /// The partition heals: what waited between the brokers moves again.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Links between broker `b` and the other brokers deliver what is
    /// written on them `delay` later (nothing else changes: a slow network,
    /// as netem would make one). `Duration::ZERO` ends it.
    pub fn delay(&mut self, b: usize, delay: Duration) {
        if delay.is_zero() {
            self.delays.remove(&b);
        } else {
            self.delays.insert(b, delay);
        }
    }

    /// How long bytes between the two ends wait (only between brokers).
    fn delay_between(&self, a: End, b: End) -> Duration {
        match (a, b) {
            (End::Shard { broker: x, .. }, End::Shard { broker: y, .. }) if x != y => {
                let of = |b| self.delays.get(&b).copied().unwrap_or_default();
                of(x).max(of(y))
            }
            _ => Duration::ZERO,
        }
    }

    /// Whether a partition separates the two ends.
    fn severed(&self, a: End, b: End) -> bool {
        match (a, b) {
            (End::Shard { broker: x, .. }, End::Shard { broker: y, .. }) => {
                x != y && self.cut.contains(&x) != self.cut.contains(&y)
            }
            _ => false,
        }
    }

    /// Broker `b`'s `ha-replicate` from its next start.
    pub fn set_replicate(&mut self, b: usize, level: &str) {
        self.replicate.insert(b, level.to_owned());
    }

    /// Starts broker `b` again as a new process (a new broker id), joining.
    pub fn restart(&mut self, b: usize) {
        if self.brokers[b].health != Health::Dead {
            self.kill(b);
        }
        self.restarts += 1;
        self.brokers[b] = self.start_broker(b);
    }

    // -----------------------------------------------------------------------
    // The HA role, as the tools see it

    pub fn ha_request(&mut self, b: usize, operation: &str, body: Value) -> Response {
        let resp = self.brokers[b].shards[0].manage(Request {
            operation: operation.into(),
            entity_type: "ha-broker".into(),
            name: None,
            body,
            // As the tools ask: the cluster's own connection.
            cluster: true,
        });
        self.settle_rings();
        resp
    }

    /// Attribute `name` of broker `b`'s `ha-broker` entity.
    pub fn attribute_of(&mut self, b: usize, name: &str) -> Value {
        let resp = self.ha_request(b, "READ", Value::Map(Vec::new()));
        resp.body.map_get(name).cloned().unwrap_or(Value::Null)
    }

    /// `tandem-ha status` of broker `b`.
    pub fn status(&mut self, b: usize) -> String {
        self.attribute_of(b, "status")
            .as_str()
            .unwrap_or("?")
            .to_owned()
    }

    pub fn statuses(&mut self) -> Vec<String> {
        (0..self.member_count()).map(|b| self.status(b)).collect()
    }

    /// How many brokers are members of the cluster (the first ones).
    pub fn member_count(&self) -> usize {
        self.brokers.len() - self.standalone.len()
    }

    /// A stand-alone broker at `address` that replicates queues
    /// (`ha-queue-replication`, no HA role), not a member: its index. Its
    /// queues `replicas` are replicas of `remote` (as its store would
    /// recover them, `replica-of` set).
    pub fn add_standalone(&mut self, address: &str, replicas: &[&str], remote: &str) -> usize {
        let settings = BrokerSettings {
            shards: self.shards_per_broker,
            service_shard: Some("repl-0".into()),
            container_id: format!("standalone-{address}"),
            initial_config: replicas
                .iter()
                .map(|q| tandem_shards::broker::ConfigOp::ReplaceQueue {
                    name: q.to_string(),
                    settings: tandem_shards::queue::QueueSettings {
                        replica_of: Some(remote.to_owned()),
                        ..Default::default()
                    },
                })
                .collect(),
            ..Default::default()
        };
        let settings = Arc::new(settings);
        let stream = StreamSettings {
            replicate: "all".into(),
            username: None,
            password: None,
            mechanism: None,
            heartbeat: HEARTBEAT,
            min_backups_timeout: self.min_backups_timeout,
            epoch_file: None,
            cluster: false,
            queue_replication: true,
        };
        let factory = tandem_ha::stream::queue_replication_extension(stream);
        let shards = (0..settings.total_shards())
            .map(|s| {
                let mut shard = Shard::new(s, settings.clone(), self.now);
                shard.set_extension(factory(s));
                shard
            })
            .collect();
        self.brokers.push(Broker {
            shards,
            health: Health::Up,
            broker_id: format!("standalone-{address}"),
            disk_ops: VecDeque::new(),
        });
        self.standalone.push(address.to_owned());
        self.brokers.len() - 1
    }

    /// The messages of `queue` on broker `b`, by position, wherever its
    /// owner shard is.
    pub fn queue_contents(&self, b: usize, queue: &str) -> Vec<(u64, Bytes)> {
        self.brokers[b]
            .shards
            .iter()
            .find_map(|s| s.queue(queue))
            .map(|q| q.snapshot())
            .unwrap_or_default()
    }

    pub fn epoch(&mut self, b: usize) -> u64 {
        self.attribute_of(b, "epoch").as_u64().unwrap_or(0)
    }

    /// Broker `b`'s members as `(broker id, status)` (a backup: as the
    /// primary last told it).
    pub fn members(&mut self, b: usize) -> Vec<(String, String)> {
        match self.attribute_of(b, "members") {
            Value::List(list) => list
                .iter()
                .map(|m| {
                    let get = |k: &str| {
                        m.map_get(k)
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_owned()
                    };
                    (get("broker-id"), get("status"))
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// `tandem-ha --cluster-manager promote`; the error text when refused.
    pub fn promote(&mut self, b: usize) -> Result<(), String> {
        self.promote_as(b, true)
    }

    /// Promotion once the broker allows it, within 1 s of virtual time (a
    /// backup refuses while it has not yet seen its killed primary's link
    /// end); the last refusal if it never does.
    pub fn promote_soon(&mut self, b: usize) -> Result<(), String> {
        let mut last = Err(String::new());
        self.run_until(Duration::from_secs(1), |c| {
            last = c.promote(b);
            last.is_ok()
        });
        last
    }

    pub fn promote_as(&mut self, b: usize, cluster_manager: bool) -> Result<(), String> {
        let body = Value::Map(vec![(
            Value::string("cluster-manager"),
            Value::Bool(cluster_manager),
        )]);
        let resp = self.ha_request(b, "PROMOTE", body);
        match resp.status {
            200 => Ok(()),
            code => Err(format!("status {code}: {}", resp.description)),
        }
    }

    // -----------------------------------------------------------------------
    // Clients

    /// A client of `kind` on `queue`; a publisher sends `limit` messages.
    pub fn add_client(&mut self, kind: Kind, queue: &str, limit: u64) -> usize {
        self.clients.push(Client::new(kind, queue, limit));
        self.clients.len() - 1
    }

    fn connect_client(&mut self, c: usize) {
        let n = self.member_count();
        let b = self.clients[c].broker % n;
        if self.brokers[b].health == Health::Dead {
            self.clients[c].broker = (b + 1) % n;
            self.clients[c].backoff = 1;
            return;
        }
        let server = self.accept(b, format!("client-{c}"));
        let client = &mut self.clients[c];
        client.engine = Some(Connection::client(client_config(None), self.now));
        client.connects += 1;
        self.pipes.push(pipe(End::Client(c), server));
    }

    /// A connection accepted by broker `b`, on the shard `SO_REUSEPORT` picks.
    fn accept(&mut self, b: usize, peer: String) -> End {
        let shard = self.rng.below(self.shards_per_broker as u64) as usize;
        let now = self.now;
        let s = &mut self.brokers[b].shards[shard];
        s.set_now(now);
        let conn = s.accept_connection(peer);
        End::Shard {
            broker: b,
            shard,
            conn,
        }
    }

    /// A test-driven peer at `address` (a replication link to that address
    /// reaches it).
    pub fn add_peer(&mut self, address: &str) -> usize {
        self.peers.push(Peer {
            address: address.into(),
            engine: None,
            events: Vec::new(),
            closed: false,
        });
        self.peers.len() - 1
    }

    /// A test-driven client engine connected to broker `b`, its open frame
    /// carrying `properties` (another broker's link, say).
    pub fn connect_peer(&mut self, b: usize, properties: Option<Value>) -> usize {
        let server = self.accept(b, "peer".into());
        self.peers.push(Peer {
            address: String::new(),
            engine: Some(Connection::client(client_config(properties), self.now)),
            events: Vec::new(),
            closed: false,
        });
        let p = self.peers.len() - 1;
        self.pipes.push(pipe(End::Peer(p), server));
        p
    }

    /// Runs until peer `p` reported an event `pick` accepts, and returns it.
    pub fn peer_event<T>(
        &mut self,
        p: usize,
        limit: Duration,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> Option<T> {
        let mut found = None;
        self.run_until(limit, |c| {
            if let Some(i) = c.peers[p].events.iter().position(|e| pick(e).is_some()) {
                let ev = c.peers[p].events.remove(i);
                found = pick(&ev);
            }
            found.is_some()
        });
        found
    }

    /// Peer `p`'s engine (to attach, accept, send), and settles what it did.
    pub fn with_peer<T>(&mut self, p: usize, f: impl FnOnce(&mut Connection) -> T) -> Option<T> {
        let out = self.peers[p].engine.as_mut().map(f);
        self.settle();
        out
    }

    // -----------------------------------------------------------------------
    // Running

    /// Advances the clock one step and runs everything that is due.
    pub fn step(&mut self) {
        self.now += STEP;
        let now = self.now;
        self.run_disks();
        for p in &mut self.pipes {
            p.budget = [self.bandwidth, self.bandwidth];
        }
        for b in 0..self.brokers.len() {
            if self.brokers[b].health != Health::Up {
                continue;
            }
            for s in 0..self.brokers[b].shards.len() {
                let shard = &mut self.brokers[b].shards[s];
                shard.set_now(now);
                shard.poll_extension(now);
                for id in shard.conn_ids() {
                    shard.conn_tick(id, now);
                }
            }
            for s in 0..self.brokers[b].shards.len() {
                let connects = self.brokers[b].shards[s].take_connection_requests();
                for (token, address, _timeout) in connects {
                    self.connect_replica(b, s, token, address);
                }
            }
        }
        for c in 0..self.clients.len() {
            self.clients[c].sent_this_step = 0;
            if self.clients[c].engine.is_none() {
                if self.clients[c].backoff > 0 {
                    self.clients[c].backoff -= 1;
                } else {
                    self.connect_client(c);
                }
            }
            if let Some(e) = self.clients[c].engine.as_mut() {
                e.tick(now);
            }
        }
        for p in &mut self.peers {
            if let Some(e) = p.engine.as_mut() {
                e.tick(now);
            }
        }
        self.settle();
    }

    /// Steps until `done` holds or `limit` of virtual time has passed.
    pub fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&mut Cluster) -> bool,
    ) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(d, |_| false);
    }

    fn connect_replica(&mut self, b: usize, s: usize, token: u64, address: String) {
        let target = self
            .addresses
            .iter()
            .position(|a| *a == address)
            .or_else(|| {
                let i = self.standalone.iter().position(|a| *a == address)?;
                Some(self.member_count() + i)
            });
        let peer = self.peers.iter().position(|p| p.address == address);
        let reachable = match (target, peer) {
            (_, Some(_)) => true,
            (Some(t), None) => {
                t != b
                    && self.cut.contains(&t) == self.cut.contains(&b)
                    && self
                        .brokers
                        .get(t)
                        .is_some_and(|t| t.health != Health::Dead)
            }
            (None, None) => false,
        };
        if !reachable {
            self.brokers[b].shards[s].connection_failed(token);
            return;
        }
        let Some(conn) = self.brokers[b].shards[s].connection_opened(token, address.clone()) else {
            return;
        };
        let backup = End::Shard {
            broker: b,
            shard: s,
            conn,
        };
        let other = match (peer, target) {
            (Some(p), _) => {
                self.peers[p].engine = Some(Connection::server(peer_config(), self.now));
                self.peers[p].closed = false;
                End::Peer(p)
            }
            (None, Some(t)) => self.accept(t, format!("broker-{b}")),
            (None, None) => return,
        };
        self.pipes.push(pipe(backup, other));
    }

    fn runs(&self, end: End) -> bool {
        match end {
            End::Shard { broker, .. } => self.brokers[broker].health == Health::Up,
            End::Client(_) | End::Peer(_) => true,
        }
    }

    /// Moves shard messages and bytes until nothing moves.
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            let moved = self.settle_rings() | self.move_bytes() | self.reap();
            if !moved {
                self.take_disk_ops();
                return;
            }
        }
        panic!("seed {}: the cluster never settled", self.seed);
    }

    /// Delivers every shard's outbox messages (FIFO per pair of shards).
    /// Moves shard messages until none are left. Each ring stays in order
    /// but the rings run in a seeded order, and a ring may wait a pass while
    /// others move (as a busy shard's executor would), so what travels on two
    /// rings arrives in either order.
    fn settle_rings(&mut self) -> bool {
        let mut any = false;
        let mut may_wait = true;
        loop {
            let (mut moved, mut waited) = (false, false);
            for b in &mut self.brokers {
                if b.health != Health::Up {
                    continue;
                }
                let n = b.shards.len();
                for from in 0..n {
                    b.shards[from].run_local();
                }
                let mut rings: Vec<(usize, usize)> = (0..n)
                    .flat_map(|from| (0..n).map(move |to| (from, to)))
                    .filter(|(from, to)| from != to)
                    .collect();
                for i in (1..rings.len()).rev() {
                    let j = self.ring_rng.below(i as u64 + 1) as usize;
                    rings.swap(i, j);
                }
                for (from, to) in rings {
                    if b.shards[from].outbox_for(to).is_empty() {
                        continue;
                    }
                    if may_wait && self.ring_rng.below(4) == 0 {
                        waited = true;
                        continue;
                    }
                    let msgs: Vec<_> = b.shards[from].outbox_for(to).drain(..).collect();
                    moved = true;
                    for m in msgs {
                        b.shards[to].on_shard_msg(m);
                    }
                }
            }
            if !moved && !waited {
                return any;
            }
            // A pass where every ring waited is followed by one where none does.
            may_wait = moved;
            any |= moved;
        }
    }

    fn output(&mut self, end: End) -> Option<Bytes> {
        match end {
            End::Shard {
                broker,
                shard,
                conn,
            } => {
                let now = self.now;
                let s = &mut self.brokers[broker].shards[shard];
                let out = s.conn_output(conn);
                if out.is_some() {
                    s.conn_wrote(conn, now);
                }
                out
            }
            End::Client(c) => {
                let client = &mut self.clients[c];
                client.publish();
                let e = client.engine.as_mut()?;
                e.has_output().then(|| e.output().split().freeze())
            }
            End::Peer(p) => {
                let e = self.peers[p].engine.as_mut()?;
                e.has_output().then(|| e.output().split().freeze())
            }
        }
    }

    /// Feeds `buf` to `end`; the end's new place if its connection moved to
    /// another shard (a handover), the rest of `buf` going along.
    fn input(&mut self, end: End, buf: &mut BytesMut) -> Option<End> {
        let now = self.now;
        match end {
            End::Shard {
                broker,
                shard,
                conn,
            } => {
                self.brokers[broker].shards[shard].conn_input(conn, buf, now);
                return self.follow_handover(broker, shard, conn, buf);
            }
            End::Client(c) => {
                let client = &mut self.clients[c];
                client.now = Some(now);
                if let Some(e) = client.engine.as_mut() {
                    e.input(buf, now);
                    let mut events = Vec::new();
                    while let Some(ev) = e.poll_event() {
                        events.push(ev);
                    }
                    for ev in events {
                        client.on_event(ev);
                    }
                    client.publish();
                }
            }
            End::Peer(p) => {
                let peer = &mut self.peers[p];
                if let Some(e) = peer.engine.as_mut() {
                    e.input(buf, now);
                    while let Some(ev) = e.poll_event() {
                        peer.events.push(ev);
                    }
                }
            }
        }
        None
    }

    /// A connection that left its shard in the step just run is adopted by
    /// its new shard (through the ring, as the runtime sends it); its new end.
    fn follow_handover(
        &mut self,
        broker: usize,
        shard: usize,
        conn: u64,
        buf: &mut BytesMut,
    ) -> Option<End> {
        let (to, handover) = self.brokers[broker].shards[shard].take_leaving(conn)?;
        let arrival = tandem_shards::broker::handover::Arrival {
            handover,
            fd: -1,
            leftover: std::mem::take(buf),
            transport: Default::default(),
        };
        self.brokers[broker].shards[shard].send_arrival(to, arrival);
        self.settle_rings();
        let adopted = self.brokers[broker].shards[to]
            .take_arrivals()
            .pop()
            .expect("the handed-over connection arrived");
        *buf = adopted.leftover;
        Some(End::Shard {
            broker,
            shard: to,
            conn: adopted.id,
        })
    }

    fn move_bytes(&mut self) -> bool {
        let mut moved = false;
        for i in 0..self.pipes.len() {
            for side in 0..2 {
                let (from, to) = (self.pipes[i].ends[side], self.pipes[i].ends[1 - side]);
                if self.severed(from, to) {
                    // Written, never delivered (until the partition heals).
                    if self.runs(from) {
                        if let Some(bytes) = self.output(from) {
                            self.pipes[i].held[side].push((self.now, bytes));
                        }
                    }
                    continue;
                }
                if self.runs(from) {
                    if let Some(bytes) = self.output(from) {
                        self.pipes[i].held[side].push((self.now, bytes));
                    }
                }
                let delay = self.delay_between(from, to);
                if self.runs(to) && self.pipes[i].budget[side] > 0 {
                    let mut rx = std::mem::take(&mut self.pipes[i].rx[1 - side]);
                    let now = self.now;
                    let p = &mut self.pipes[i];
                    let mut taken = 0;
                    let leftover = rx.len();
                    while taken < p.held[side].len()
                        && p.budget[side] > 0
                        && p.held[side][taken].0 + delay <= now
                    {
                        let chunk = &mut p.held[side][taken].1;
                        let n = chunk.len().min(p.budget[side]);
                        rx.extend_from_slice(&chunk.split_to(n));
                        p.budget[side] -= n;
                        if chunk.is_empty() {
                            taken += 1;
                        }
                    }
                    p.held[side].drain(..taken);
                    let arrived = rx.len() > leftover;
                    if !rx.is_empty() && (arrived || !self.pipes[i].unread[1 - side]) {
                        let fed = rx.len();
                        let handed_over = match self.input(to, &mut rx) {
                            Some(moved_to) => {
                                self.pipes[i].ends[1 - side] = moved_to;
                                true
                            }
                            None => false,
                        };
                        // An end that leaves what it was given (closing, say)
                        // waits for more bytes, and does not keep the
                        // cluster busy meanwhile.
                        self.pipes[i].unread[1 - side] = rx.len() == fed && !handed_over;
                        moved |= arrived || rx.len() < fed || handed_over;
                    }
                    self.pipes[i].rx[1 - side] = rx;
                }
            }
        }
        moved
    }

    fn is_closed(&self, end: End) -> bool {
        match end {
            End::Shard {
                broker,
                shard,
                conn,
            } => {
                let s = &self.brokers[broker].shards[shard];
                s.conn_closed(conn) && !s.conn_has_output(conn)
            }
            End::Client(c) => self.clients[c]
                .engine
                .as_ref()
                .is_none_or(|e| e.is_closed() && !e.has_output()),
            End::Peer(p) => self.peers[p]
                .engine
                .as_ref()
                .is_none_or(|e| e.is_closed() && !e.has_output()),
        }
    }

    /// The socket of `end` saw end of file.
    fn eof(&mut self, end: End) {
        match end {
            End::Shard {
                broker,
                shard,
                conn,
            } => {
                if self.brokers[broker].health != Health::Dead {
                    self.brokers[broker].shards[shard].conn_eof(conn);
                    self.brokers[broker].shards[shard].remove_connection(conn);
                }
            }
            End::Client(c) => self.clients[c].lost(),
            End::Peer(p) => {
                self.peers[p].engine = None;
                self.peers[p].closed = true;
            }
        }
    }

    fn is_closing(&self, end: End) -> bool {
        match end {
            End::Shard {
                broker,
                shard,
                conn,
            } => self.brokers[broker].shards[shard].conn_closing(conn),
            End::Client(c) => self.clients[c]
                .engine
                .as_ref()
                .is_some_and(Connection::is_closing),
            End::Peer(p) => self.peers[p]
                .engine
                .as_ref()
                .is_some_and(Connection::is_closing),
        }
    }

    /// Closes the sockets of connections that are over, or that waited for
    /// the peer's close longer than [`CLOSE_GRACE`].
    fn reap(&mut self) -> bool {
        let mut moved = false;
        let mut i = 0;
        while i < self.pipes.len() {
            let mut gone = None;
            for side in 0..2 {
                let end = self.pipes[i].ends[side];
                if !self.runs(end) {
                    continue;
                }
                if self.is_closing(end) {
                    let since = *self.pipes[i].closing_since[side].get_or_insert(self.now);
                    if self.now.duration_since(since) > CLOSE_GRACE {
                        gone = Some(side);
                        break;
                    }
                }
                if self.is_closed(end) {
                    gone = Some(side);
                    break;
                }
            }
            match gone {
                // A stopped peer reads the last bytes and the end of file when
                // it runs again (the kernel keeps them meanwhile).
                Some(side) if !self.runs(self.pipes[i].ends[1 - side]) => i += 1,
                // Across a partition the end of file does not arrive either.
                Some(_) if self.severed(self.pipes[i].ends[0], self.pipes[i].ends[1]) => i += 1,
                Some(side) => {
                    let (end, other) = (self.pipes[i].ends[side], self.pipes[i].ends[1 - side]);
                    // What it wrote reaches the other side before the end of file.
                    let held = std::mem::take(&mut self.pipes[i].held[side]);
                    if !held.is_empty() {
                        let mut rx = std::mem::take(&mut self.pipes[i].rx[1 - side]);
                        for (_, b) in held {
                            rx.extend_from_slice(&b);
                        }
                        let _ = self.input(other, &mut rx);
                    }
                    self.pipes.swap_remove(i);
                    self.eof(end);
                    self.eof(other);
                    moved = true;
                }
                None => i += 1,
            }
        }
        moved
    }

    /// Cuts the connection between broker `b`'s replication link and its
    /// primary, as a network blip would (both sockets see an error).
    pub fn cut_replication_link(&mut self, b: usize) -> bool {
        let found = self.pipes.iter().position(|p| {
            matches!(p.ends[0], End::Shard { broker, .. } if broker == b)
                && matches!(p.ends[1], End::Shard { .. } | End::Peer(_))
        });
        let Some(i) = found else { return false };
        let p = self.pipes.swap_remove(i);
        self.eof(p.ends[0]);
        self.eof(p.ends[1]);
        true
    }

    // -----------------------------------------------------------------------
    // Checks

    /// Every number a publisher had settled that no consumer of its queue
    /// received.
    pub fn lost(&self) -> Vec<u64> {
        let mut lost = Vec::new();
        for p in self.clients.iter().filter(|c| c.kind == Kind::Publisher) {
            let received: BTreeSet<u64> = self
                .clients
                .iter()
                .filter(|c| c.kind == Kind::Consumer && c.queue == p.queue)
                .flat_map(|c| c.received.iter().copied())
                .collect();
            lost.extend(p.settled.iter().filter(|n| !received.contains(n)));
        }
        lost
    }

    /// A publisher of `limit` numbers to `queue`, at most `per_step` a step,
    /// once more than `settled` of them are settled (it panics if not within
    /// 5 s).
    pub fn publishing(&mut self, queue: &str, limit: u64, per_step: u64, settled: usize) -> usize {
        let p = self.add_client(Kind::Publisher, queue, limit);
        self.clients[p].per_step = Some(per_step);
        let going = self.run_until(Duration::from_secs(5), |c| {
            c.clients[p].settled.len() > settled
        });
        assert!(going, "seed {}: {}", self.seed, self.clients[p].describe());
        p
    }

    /// Runs until publisher `p` had everything settled; panics naming `what`
    /// if not `within`.
    pub fn assert_all_settled(&mut self, p: usize, within: Duration, what: &str) {
        let done = self.run_until(within, |c| c.clients[p].all_settled());
        assert!(done, "{what}: {}", self.clients[p].describe());
    }

    /// Consumes `queue` on broker `b` until every settled message arrived
    /// (or 5 s of virtual time passed); the numbers lost.
    pub fn drain(&mut self, queue: &str, b: usize) -> Vec<u64> {
        let consumer = self.add_client(Kind::Consumer, queue, 0);
        self.clients[consumer].broker = b;
        self.run_until(Duration::from_secs(5), |c| c.lost().is_empty());
        self.lost()
    }

    /// A broker's extension counter (`ha-catch-up-messages`, ...), summed
    /// over its shards as management sums it.
    pub fn counter(&self, b: usize, name: &str) -> u64 {
        self.brokers[b]
            .shards
            .iter()
            .flat_map(|s| s.report().counters)
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .sum()
    }

    /// Which broker is primary and active, if exactly one is.
    pub fn active(&mut self) -> Option<usize> {
        let up: Vec<usize> = (0..self.member_count())
            .filter(|&b| self.brokers[b].health == Health::Up)
            .collect();
        let active: Vec<usize> = up
            .into_iter()
            .filter(|&b| self.status(b) == "active")
            .collect();
        (active.len() == 1).then(|| active[0])
    }
}

/// A consumer takes more until it received `limit` (if it has one).
fn wants_more(limit: u64, received: &[u64]) -> bool {
    limit == 0 || (received.len() as u64) < limit
}

fn pipe(a: End, b: End) -> Pipe {
    Pipe {
        ends: [a, b],
        held: [Vec::new(), Vec::new()],
        rx: [BytesMut::new(), BytesMut::new()],
        budget: [BANDWIDTH, BANDWIDTH],
        closing_since: [None, None],
        unread: [false, false],
    }
}

fn peer_config() -> ConnectionConfig {
    ConnectionConfig {
        container_id: "sim-peer".into(),
        max_frame_size: 65536,
        channel_max: 16,
        idle_timeout: None,
        properties: None,
        max_message_size: 1 << 20,
        hostname: None,
        sasl: Sasl::Server {
            mechanisms: vec!["ANONYMOUS".into()],
            authenticator: Box::new(|_: &str, _: &[u8]| Some("anonymous".into())),
            require: false,
        },
    }
}

/// Three brokers, 0 promoted and active, 1 and 2 ready.
pub fn running_cluster(shards: usize, seed: u64) -> Cluster {
    let mut c = Cluster::new(3, shards, seed);
    assert!(
        c.run_until(Duration::from_secs(2), |c| c.promote(0).is_ok()),
        "seed {seed}: broker 0 was never promotable"
    );
    let ok = c.run_until(Duration::from_secs(5), |c| {
        c.statuses() == ["active", "ready", "ready"]
    });
    assert!(ok, "seed {seed}: cluster not running: {:?}", c.statuses());
    c
}

/// The seeds a random schedule runs: `TANDEM_SIM_SEEDS=1,2,...`, or 1 to 8.
pub fn seeds() -> Vec<u64> {
    match std::env::var("TANDEM_SIM_SEEDS") {
        Ok(list) => list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect(),
        Err(_) => (1..=8).collect(),
    }
}
