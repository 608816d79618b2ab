//! The store on each shard, as the shards' extension: it wraps the broker's
//! other extension (HA, or none) and passes it everything, and on the way
//! taps every durable queue its shard owns, holds publishers' settlements
//! on them (a second settlement holder beside replication), writes
//! persistent messages and dequeues to the shard's journal, and on shard 0
//! rewrites the durable configuration file after every change.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hashbrown::HashSet;
use tandem_shards::amqp::codec::Value;
use tandem_shards::amqp::connection::{Connection, Event, LinkKey};
use tandem_shards::amqp::message::durable;
use tandem_shards::amqp::performative::{Attach, ErrorCondition};
use tandem_shards::broker::ext::{ExtMsg, Extension, Tap};
use tandem_shards::broker::{ConfigDone, ConfigEvent, ConfigOp, Shard};
use tandem_shards::disk::{DiskOp, DiskResult};
use tandem_shards::management::{Request, Response};
use tandem_shards::runtime::ExtensionFactory;

use crate::journal::Journal;
use crate::recovery::Recovered;

/// The store's settlement holder id (replication's are backup member ids,
/// counted up from 1).
pub const HOLDER: u64 = u64::MAX;
/// How long a failed journal or configuration write waits before it is
/// tried again.
const RETRY: Duration = Duration::from_secs(1);

/// How the store runs (from the `store*` options).
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// `store-dir`: the journal of shard N is `DIR/shard-N`, the durable
    /// configuration `DIR/config`.
    pub dir: PathBuf,
    pub segment_size: u64,
    /// `store-sync`: off writes without waiting for the disk (unsafe).
    pub sync: bool,
}

impl StoreSettings {
    pub fn shard_dir(&self, shard: usize) -> PathBuf {
        self.dir.join(format!("shard-{shard}"))
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config")
    }
}

/// The factory `runtime::start` runs on every shard: the store's part on
/// worker shards (with what recovery found for them), wrapping `inner`.
pub fn extension(
    settings: StoreSettings,
    recovered: Vec<Recovered>,
    inner: Option<ExtensionFactory>,
) -> ExtensionFactory {
    let settings = Arc::new(settings);
    let recovered = Arc::new(Mutex::new(
        recovered.into_iter().map(Some).collect::<Vec<_>>(),
    ));
    Arc::new(move |shard: usize| -> Box<dyn Extension> {
        let found = recovered
            .lock()
            .ok()
            .and_then(|mut r| r.get_mut(shard).and_then(Option::take));
        Box::new(Store {
            settings: settings.clone(),
            recovered: found,
            journal: None,
            durable: HashSet::new(),
            write: None,
            next_write: 1,
            retry_at: None,
            failing: None,
            config: ConfigWriter::default(),
            inner: inner.as_ref().map(|f| f(shard)),
            counts: Counts::default(),
        })
    })
}

#[derive(Default)]
struct ConfigWriter {
    /// The configuration changed since the last write was started.
    dirty: bool,
    running: Option<u64>,
    /// The durable queues and exchanges of the last file written (a delete
    /// or binding change of anything else leaves the file as it is).
    durable: HashSet<Arc<str>>,
}

pub struct Store {
    settings: Arc<StoreSettings>,
    /// Taken at start.
    recovered: Option<Recovered>,
    /// On worker shards.
    journal: Option<Journal>,
    /// The durable queues this shard owns (tapped and held).
    durable: HashSet<Arc<str>>,
    /// The journal write running: disk token and the journal's own.
    write: Option<(u64, u64)>,
    next_write: u64,
    /// After a failed write: not before then.
    retry_at: Option<Instant>,
    /// The last journal write failed, and why: new persistent messages are
    /// refused until one succeeds.
    failing: Option<String>,
    config: ConfigWriter,
    inner: Option<Box<dyn Extension>>,
    counts: Counts,
}

/// What the journal did (the broker's `store-*` management attributes).
#[derive(Default)]
struct Counts {
    writes: u64,
    bytes: u64,
    persistent: u64,
}

impl Store {
    /// Puts what recovery found back into this shard's queues, and starts the
    /// journal after it.
    fn recover(&mut self, shard: &mut Shard) {
        let Some(found) = self.recovered.take() else {
            return;
        };
        let dir = self.settings.shard_dir(shard.id);
        let mut journal = Journal::new(
            shard.id as u32,
            dir,
            self.settings.segment_size,
            found.next_segment,
        );
        let mut dropped = 0usize;
        let mut gone: HashSet<Arc<str>> = HashSet::new();
        let mut counts = found.delivery_counts;
        for (queue, messages) in found.queues {
            match shard.queue_mut(&queue) {
                Some(q) => {
                    for (position, message) in messages {
                        q.insert_at(position, message);
                    }
                    for (position, n) in counts.remove(&queue).unwrap_or_default() {
                        q.set_delivery_count(position, n);
                    }
                }
                None => {
                    dropped += messages.len();
                    let positions: Vec<u64> = messages.keys().copied().collect();
                    journal.discard(&queue, &positions);
                    gone.insert(queue);
                }
            }
        }
        if dropped > 0 {
            tracing::warn!(
                "store: {dropped} recovered messages belong to queues that are no longer declared; dropped"
            );
        }
        for mut segment in found.segments {
            // A recovered message whose queue is gone is not live.
            segment.live.retain(|(q, _)| !gone.contains(q));
            journal.recovered_segment(segment.number, segment.live, segment.enqueues);
        }
        self.journal = Some(journal);
    }

    /// Whether a configuration change touches what the configuration file
    /// holds: something durable declared, a durable queue or exchange deleted,
    /// a binding of a durable queue (temporary queues come and go often).
    fn touches_durable(&self, shard: &Shard, event: &ConfigEvent) -> bool {
        let durable_queue = |name: &Arc<str>| {
            self.config.durable.contains(name)
                || shard
                    .catalogue
                    .queues
                    .get(name)
                    .is_some_and(|e| e.settings.durable && !e.settings.auto_delete)
        };
        match event {
            ConfigEvent::QueueDeclared { settings, .. } => settings.durable,
            ConfigEvent::ExchangeDeclared { durable, .. } => *durable,
            ConfigEvent::QueueDeleted { name } | ConfigEvent::ExchangeDeleted { name } => {
                self.config.durable.contains(name)
            }
            ConfigEvent::Bound { binding, .. } | ConfigEvent::Unbound { binding, .. } => {
                durable_queue(&binding.queue)
            }
        }
    }

    /// Taps and holds an owned durable queue.
    fn guard(&mut self, shard: &mut Shard, name: &Arc<str>) {
        if self.durable.insert(name.clone()) {
            shard.tap_queue(name);
            shard.hold(name, HOLDER);
        }
    }

    fn stored(&mut self, shard: &mut Shard, queue: &Arc<str>, position: u64, message: &Bytes) {
        if !self.durable.contains(queue) {
            return;
        }
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        if durable(message) {
            journal.enqueue(queue, position, message);
            self.counts.persistent += 1;
        } else if let Some(upto) = journal.pass(queue, position) {
            shard.release(queue, HOLDER, upto);
        }
    }

    fn applied(&mut self, shard: &mut Shard, event: &ConfigEvent) {
        match event {
            ConfigEvent::QueueDeclared {
                name,
                owner,
                settings,
            } if *owner == shard.id
                && settings.durable
                && !settings.auto_delete
                && self.journal.is_some() =>
            {
                self.guard(shard, name)
            }
            ConfigEvent::QueueDeleted { name } if self.durable.remove(name) => {
                if let Some(j) = self.journal.as_mut() {
                    j.drop_queue(name);
                }
            }
            _ => {}
        }
    }

    /// Starts the writes that are due: the journal's next group (one at a
    /// time), removals of emptied segments, the configuration file.
    fn issue(&mut self, shard: &mut Shard) {
        if self.retry_at.is_some_and(|t| shard.now() < t) {
            return;
        }
        self.retry_at = None;
        if let Some(journal) = self.journal.as_mut() {
            if self.write.is_none() {
                let local = self.next_write;
                if let Some(mut op) = journal.next_write(local) {
                    self.next_write += 1;
                    if let DiskOp::Write { sync, data, .. } = &mut op {
                        *sync = self.settings.sync;
                        self.counts.writes += 1;
                        self.counts.bytes += data.len() as u64;
                    }
                    self.write = Some((shard.disk(op), local));
                }
            }
            for (queue, upto) in journal.take_passed() {
                shard.release(&queue, HOLDER, upto);
            }
            if let Some(keys) = journal.compaction() {
                for (queue, position) in keys {
                    let found = shard.queue(&queue).and_then(|q| q.message_at(position));
                    let message = found.as_ref().map(|(m, n)| (&m[..], *n));
                    journal.rewrite(&queue, position, message);
                }
            }
            for op in journal.collect() {
                shard.disk(op);
            }
        }
        if shard.id == 0 && self.config.dirty && self.config.running.is_none() {
            self.config.dirty = false;
            let ops = crate::config_file::durable_config(&shard.catalogue);
            self.config.durable = ops
                .iter()
                .filter_map(|op| match op {
                    ConfigOp::ReplaceQueue { name, .. }
                    | ConfigOp::DeclareExchange { name, .. } => Some(Arc::from(name.as_str())),
                    _ => None,
                })
                .collect();
            let data = crate::config_file::encode(&ops);
            let path = self.settings.config_path();
            self.config.running = Some(shard.disk(DiskOp::Replace { path, data }));
        }
    }

    fn done(&mut self, shard: &mut Shard, token: u64, result: &DiskResult) {
        if let Some((t, local)) = self.write {
            if t == token {
                self.write = None;
                match result {
                    Err(e) => {
                        if self.failing.is_none() {
                            tracing::error!("store: journal write failed ({e}); persistent messages are refused until a write succeeds (tried again every {RETRY:?})");
                            if let Some(i) = self.inner.as_mut() {
                                i.store_failing(shard, Some(e));
                            }
                        }
                        self.failing = Some(e.clone());
                        self.retry_at = Some(shard.now() + RETRY);
                    }
                    Ok(()) => {
                        if self.failing.take().is_some() {
                            tracing::info!("store: journal writes succeed again; persistent messages are accepted");
                            if let Some(i) = self.inner.as_mut() {
                                i.store_failing(shard, None);
                            }
                        }
                    }
                }
                let written = self
                    .journal
                    .as_mut()
                    .map(|j| j.written(local, result.is_ok()))
                    .unwrap_or_default();
                for (queue, upto) in written.releases {
                    shard.release(&queue, HOLDER, upto);
                }
            }
        }
        if self.config.running == Some(token) {
            self.config.running = None;
            if let Err(e) = result {
                tracing::error!(
                    "store: writing the durable configuration failed ({e}); trying again"
                );
                self.config.dirty = true;
                self.retry_at = Some(shard.now() + RETRY);
            }
        }
    }
}

impl Extension for Store {
    fn start(&mut self, shard: &mut Shard) {
        if shard.id < shard.workers() {
            self.recover(shard);
            let names = shard.queue_names();
            for name in names {
                let durable = shard
                    .queue(&name)
                    .is_some_and(|q| q.settings.durable && !q.settings.auto_delete);
                if durable {
                    self.guard(shard, &name);
                }
            }
        }
        if let Some(i) = self.inner.as_mut() {
            i.start(shard);
        }
    }

    fn tap(&mut self, shard: &mut Shard, tap: Tap) {
        match &tap {
            Tap::Stored {
                queue,
                position,
                message,
            } => self.stored(shard, queue, *position, message),
            Tap::Dequeued { queue, positions } => {
                if self.durable.contains(queue) {
                    if let Some(j) = self.journal.as_mut() {
                        j.dequeue(queue, positions);
                    }
                }
            }
            Tap::Redelivered { queue, counts } => {
                if self.durable.contains(queue) {
                    if let Some(j) = self.journal.as_mut() {
                        j.redelivered(queue, counts);
                    }
                }
            }
            Tap::Applied(event) => self.applied(shard, event),
            Tap::Ordered(events) => {
                if shard.id == 0 && events.iter().any(|e| self.touches_durable(shard, e)) {
                    self.config.dirty = true;
                }
            }
        }
        if let Some(i) = self.inner.as_mut() {
            i.tap(shard, tap);
        }
    }

    fn end_of_step(&mut self, shard: &mut Shard) {
        self.issue(shard);
        if let Some(i) = self.inner.as_mut() {
            i.end_of_step(shard);
        }
    }

    fn poll(&mut self, shard: &mut Shard, now: Instant) {
        self.issue(shard);
        if let Some(i) = self.inner.as_mut() {
            i.poll(shard, now);
        }
    }

    fn disk_done(&mut self, shard: &mut Shard, token: u64, result: DiskResult) {
        self.done(shard, token, &result);
        self.issue(shard);
        if let Some(i) = self.inner.as_mut() {
            i.disk_done(shard, token, result);
        }
    }

    fn refuse_store(&self, queue: &str, message: &Bytes) -> Option<ErrorCondition> {
        let ours = self
            .failing
            .as_ref()
            .filter(|_| self.durable.contains(queue) && durable(message));
        match ours {
            Some(why) => Some(ErrorCondition::new(
                tandem_shards::amqp::performative::condition::RESOURCE_LIMIT_EXCEEDED,
                format!(
                    "the store cannot write persistent messages to disk ({why}); try again later"
                ),
            )),
            None => self
                .inner
                .as_ref()
                .and_then(|i| i.refuse_store(queue, message)),
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counts;
        let mut all = vec![
            ("store-journal-writes", c.writes),
            ("store-journal-bytes", c.bytes),
            ("store-persistent-messages", c.persistent),
        ];
        if let Some(i) = self.inner.as_ref() {
            all.extend(i.counters());
        }
        all
    }

    // Everything else is the inner extension's.

    fn facts(&self) -> Vec<(&'static str, String)> {
        self.inner.as_ref().map(|i| i.facts()).unwrap_or_default()
    }

    fn series(&self, now: Instant) -> Vec<tandem_shards::stats::Series> {
        self.inner
            .as_ref()
            .map(|i| i.series(now))
            .unwrap_or_default()
    }

    fn manages(&self, entity_type: &str) -> bool {
        self.inner.as_ref().is_some_and(|i| i.manages(entity_type))
    }

    fn manage(&mut self, shard: &mut Shard, request: Request) -> Response {
        match self.inner.as_mut() {
            Some(i) => i.manage(shard, request),
            None => Response::error(
                tandem_shards::management::status::NOT_FOUND,
                format!("no such entity type: {}", request.entity_type),
            ),
        }
    }

    fn is_admin(&self, properties: Option<&Value>) -> bool {
        self.inner.as_ref().is_some_and(|i| i.is_admin(properties))
    }

    fn claims(&self, address: &str) -> bool {
        self.inner.as_ref().is_some_and(|i| i.claims(address))
    }

    fn access_node<'a>(&self, attach: &'a Attach) -> Option<&'a str> {
        self.inner.as_ref().and_then(|i| i.access_node(attach))
    }

    fn queue_attributes(&self, shard: &Shard, name: &str) -> Vec<(&'static str, Value)> {
        self.inner
            .as_ref()
            .map(|i| i.queue_attributes(shard, name))
            .unwrap_or_default()
    }

    fn home(&self, shard: &Shard) -> Option<usize> {
        self.inner.as_ref().and_then(|i| i.home(shard))
    }

    fn attach(&mut self, shard: &mut Shard, conn: u64, link: LinkKey, attach: Attach) {
        if let Some(i) = self.inner.as_mut() {
            i.attach(shard, conn, link, attach);
        }
    }

    fn link_event(&mut self, shard: &mut Shard, conn: u64, event: &Event) {
        if let Some(i) = self.inner.as_mut() {
            i.link_event(shard, conn, event);
        }
    }

    fn owned_event(&mut self, shard: &mut Shard, conn: u64, event: Event) {
        if let Some(i) = self.inner.as_mut() {
            i.owned_event(shard, conn, event);
        }
    }

    fn heard(&mut self, shard: &mut Shard, conn: u64, now: Instant) {
        if let Some(i) = self.inner.as_mut() {
            i.heard(shard, conn, now);
        }
    }

    fn connected(&mut self, shard: &mut Shard, token: u64, address: &str) -> Option<Connection> {
        self.inner
            .as_mut()
            .and_then(|i| i.connected(shard, token, address))
    }

    fn opened(&mut self, shard: &mut Shard, token: u64, conn: u64) {
        if let Some(i) = self.inner.as_mut() {
            i.opened(shard, token, conn);
        }
    }

    fn connect_failed(&mut self, shard: &mut Shard, token: u64) {
        if let Some(i) = self.inner.as_mut() {
            i.connect_failed(shard, token);
        }
    }

    fn message(&mut self, shard: &mut Shard, message: ExtMsg) {
        if let Some(i) = self.inner.as_mut() {
            i.message(shard, message);
        }
    }

    fn config_done(
        &mut self,
        shard: &mut Shard,
        req: u64,
        result: Result<ConfigDone, ErrorCondition>,
    ) {
        if let Some(i) = self.inner.as_mut() {
            i.config_done(shard, req, result);
        }
    }

    fn acked(&mut self, shard: &mut Shard, token: u64, rejected: Option<&ErrorCondition>) {
        if let Some(i) = self.inner.as_mut() {
            i.acked(shard, token, rejected);
        }
    }
}
