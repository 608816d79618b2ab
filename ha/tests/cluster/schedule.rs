//! Randomised fault schedules over the simulated cluster, and the checkers
//! that judge each run.
//!
//! A seed makes a [`Schedule`]: publishes, consumes, kills, restarts,
//! SIGSTOPs, cut replication links, partitions, slow links and promotions,
//! in a seeded order. [`run`] plays it on a three-broker cluster
//! (`ha-min-backups = 1`, with a store for odd seeds) while a simulated
//! resource manager promotes the way the OCF agent does: when it sees no
//! primary, it asks each broker it can reach, ready backups first, and
//! tandem-ha's own rules refuse what must not be promoted. Then the faults
//! stop and the checkers look at what every client saw:
//!
//! - **lost**: every message a publisher had settled reaches a consumer;
//! - **duplicates**: a message is delivered more than once only as often as
//!   its in-flight windows allow: sent again by its publisher, held by a
//!   broker when that broker was promoted, or among the last
//!   [`super::CONSUMER_CREDIT`] a consumer received before its connection was lost;
//! - **stale primary**: no broker settles a publish as primary once a
//!   primary of a higher epoch has existed for more than 2 × heartbeat, and
//!   only a promoted broker settles at all;
//! - **ready**: after the faults stop, one primary is active and both
//!   backups are ready.
//!
//! A failing schedule is shrunk ([`shrink`]) to a shorter one that still
//! fails, printed with its seed as a replay line for
//! `TANDEM_SIM_REPLAY` (`scripts/sim-search`).

use std::collections::BTreeMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use tandem_shards::amqp::message::DecodedMessage;

use super::{Cluster, Health, Kind, Rng, HEARTBEAT};

/// Whom a fault hits, decided when it happens: the active primary, or the
/// `k`-th other broker (in index order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Primary,
    Backup(usize),
}

/// One step of a schedule. Durations are milliseconds of virtual time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Let time pass.
    Pause(u64),
    /// A new publisher of `count` new numbers to queue `q{queue}`, at most
    /// `per_step` new ones a step.
    Publish {
        queue: u8,
        count: u64,
        per_step: u64,
    },
    /// A new consumer of queue `q{queue}`, trying broker `broker` first.
    Consume { queue: u8, broker: usize },
    /// kill -9 (skipped if it would leave no up broker holding everything:
    /// the cluster survives N − 1 failures, not N).
    Kill(Target),
    /// The first dead broker starts again.
    Restart,
    /// SIGSTOP for a while, then SIGCONT.
    Stall(Target, u64),
    /// A backup's replication link drops (a network blip).
    CutLink(Target),
    /// A partition cuts the broker off from the others (clients still reach
    /// it; the resource manager is on the other side) for a while.
    Partition(Target, u64),
    /// The broker's links to the others deliver `delay` late for a while.
    Delay {
        target: Target,
        delay: u64,
        during: u64,
    },
    /// The resource manager asks tandem-ha to promote (it may refuse).
    Promote(Target),
}

/// A sequence of ops: what a seed makes, or a replay line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule(pub Vec<Op>);

/// How many queues the schedules use (`q0`, `q1`).
const QUEUES: u8 = 2;
/// A run's `ha-min-backups-timeout`.
const MIN_BACKUPS_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the resource manager waits, once it sees no primary, before it
/// promotes (its monitor interval and failure count).
const RM_DETECTION: Duration = Duration::from_millis(300);
/// The resource manager looks this often.
const RM_INTERVAL: u32 = 10;
/// After the faults stop: time for the cluster to be whole again, and then
/// for every publisher to finish and every message to be consumed.
const HEAL_WITHIN: Duration = Duration::from_secs(30);
const FINISH_WITHIN: Duration = Duration::from_secs(30);

impl Schedule {
    /// The schedule seed `seed` makes: some load first, then 8 to 15 ops.
    pub fn generate(seed: u64) -> Schedule {
        let mut rng = Rng::new(seed ^ 0x5343_4845_4455_4c45);
        let mut ops = vec![
            Op::Publish {
                queue: 0,
                count: 100 + rng.below(300),
                per_step: 1 + rng.below(4),
            },
            Op::Publish {
                queue: 1,
                count: 100 + rng.below(300),
                per_step: 1 + rng.below(4),
            },
            Op::Consume {
                queue: 0,
                broker: rng.below(3) as usize,
            },
        ];
        let target = |rng: &mut Rng| match rng.below(2) {
            0 => Target::Primary,
            _ => Target::Backup(rng.below(2) as usize),
        };
        for _ in 0..8 + rng.below(8) {
            let op = match rng.below(20) {
                0..=3 => Op::Pause(50 + rng.below(1500)),
                4..=5 => Op::Publish {
                    queue: rng.below(u64::from(QUEUES)) as u8,
                    count: 50 + rng.below(250),
                    per_step: 1 + rng.below(4),
                },
                6 => Op::Consume {
                    queue: rng.below(u64::from(QUEUES)) as u8,
                    broker: rng.below(3) as usize,
                },
                7..=8 => Op::Kill(target(&mut rng)),
                9..=10 => Op::Restart,
                11..=12 => Op::Stall(target(&mut rng), 100 + rng.below(3000)),
                13 => Op::CutLink(Target::Backup(rng.below(2) as usize)),
                14..=15 => Op::Partition(target(&mut rng), 200 + rng.below(3000)),
                16..=17 => Op::Delay {
                    target: target(&mut rng),
                    delay: 10 + rng.below(200),
                    during: 200 + rng.below(2000),
                },
                _ => Op::Promote(target(&mut rng)),
            };
            ops.push(op);
        }
        Schedule(ops)
    }

    /// Reads a replay line: ops separated by `;`, as [`fmt::Display`] writes them.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let ops = text
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(parse_op)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Schedule(ops))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Primary => write!(f, "primary"),
            Target::Backup(k) => write!(f, "backup{k}"),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Pause(ms) => write!(f, "pause {ms}"),
            Op::Publish {
                queue,
                count,
                per_step,
            } => write!(f, "publish q{queue} {count} {per_step}"),
            Op::Consume { queue, broker } => write!(f, "consume q{queue} {broker}"),
            Op::Kill(t) => write!(f, "kill {t}"),
            Op::Restart => write!(f, "restart"),
            Op::Stall(t, ms) => write!(f, "stall {t} {ms}"),
            Op::CutLink(t) => write!(f, "cut-link {t}"),
            Op::Partition(t, ms) => write!(f, "partition {t} {ms}"),
            Op::Delay {
                target,
                delay,
                during,
            } => write!(f, "delay {target} {delay} {during}"),
            Op::Promote(t) => write!(f, "promote {t}"),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ops: Vec<String> = self.0.iter().map(Op::to_string).collect();
        write!(f, "{}", ops.join("; "))
    }
}

fn parse_op(text: &str) -> Result<Op, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let bad = || format!("replay op '{text}': not an op (see Op's Display)");
    let number = |i: usize| -> Result<u64, String> {
        words.get(i).and_then(|w| w.parse().ok()).ok_or_else(bad)
    };
    let target = |i: usize| -> Result<Target, String> {
        match words.get(i).copied() {
            Some("primary") => Ok(Target::Primary),
            Some(w) => w
                .strip_prefix("backup")
                .and_then(|k| k.parse().ok())
                .map(Target::Backup)
                .ok_or_else(bad),
            None => Err(bad()),
        }
    };
    let queue = |i: usize| -> Result<u8, String> {
        words
            .get(i)
            .and_then(|w| w.strip_prefix('q'))
            .and_then(|q| q.parse().ok())
            .filter(|q| *q < QUEUES)
            .ok_or_else(bad)
    };
    let op = match words.first().copied() {
        Some("pause") => Op::Pause(number(1)?),
        Some("publish") => Op::Publish {
            queue: queue(1)?,
            count: number(2)?,
            per_step: number(3)?.max(1),
        },
        Some("consume") => Op::Consume {
            queue: queue(1)?,
            broker: number(2)? as usize % 3,
        },
        Some("kill") => Op::Kill(target(1)?),
        Some("restart") => Op::Restart,
        Some("stall") => Op::Stall(target(1)?, number(2)?),
        Some("cut-link") => Op::CutLink(target(1)?),
        Some("partition") => Op::Partition(target(1)?, number(2)?),
        Some("delay") => Op::Delay {
            target: target(1)?,
            delay: number(2)?,
            during: number(3)?,
        },
        Some("promote") => Op::Promote(target(1)?),
        _ => return Err(bad()),
    };
    Ok(op)
}

/// What a passing run saw, for the record.
#[derive(Debug, Default)]
pub struct Summary {
    pub settled: usize,
    pub duplicates: usize,
    pub promotions: usize,
    pub skipped_kills: usize,
    pub virtual_time: Duration,
}

/// Why a run failed: which checker, and what it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub checker: &'static str,
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.checker, self.detail)
    }
}

/// One run's cluster and what the checkers need beyond the clients' records.
struct Run {
    c: Cluster,
    started: Instant,
    /// Each promotion: when, which broker, its epoch.
    promotions: Vec<(Instant, usize, u64)>,
    /// Each (re)start of a broker after the first: when, which.
    restarts: Vec<(Instant, usize)>,
    /// Numbers a broker held when it was promoted (how many promotions each
    /// was in): what the new primary may deliver again.
    on_promoted: BTreeMap<u64, u32>,
    /// Since when the resource manager sees no primary.
    no_primary_since: Option<Instant>,
    next_number: u64,
    steps: u32,
    skipped_kills: usize,
    /// `TANDEM_SIM_TRACE` set: what happens is printed (for a replay).
    trace: bool,
    last_statuses: Vec<String>,
}

/// Plays `schedule` with `seed` and checks the outcome. A panic in the
/// cluster (the simulation's own asserts) is a failure too.
pub fn run(seed: u64, schedule: &Schedule) -> Result<Summary, Failure> {
    quiet_panics();
    QUIET.with(|q| q.set(true));
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| play(seed, schedule)));
    QUIET.with(|q| q.set(false));
    match outcome {
        Ok(outcome) => outcome,
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Err(Failure {
                checker: "panic",
                detail: text,
            })
        }
    }
}

thread_local! {
    /// Set while [`run`] plays a schedule: its panics become failures, so
    /// the panic hook does not print them (a search would print hundreds).
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs, once, a panic hook that stays silent on threads playing a
/// schedule and prints as usual elsewhere.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let usual = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                usual(info);
            }
        }));
    });
}

fn play(seed: u64, schedule: &Schedule) -> Result<Summary, Failure> {
    let store = seed % 2 == 1;
    let mut c = Cluster::with_store_and_min_backups(3, 2, seed, store, 1, MIN_BACKUPS_TIMEOUT);
    // Narrow pipes: replication lags behind publishing, so settlements
    // really wait for the backups.
    c.bandwidth = 4096;
    let started = c.now;
    let mut r = Run {
        c,
        started,
        promotions: Vec::new(),
        restarts: Vec::new(),
        on_promoted: BTreeMap::new(),
        no_primary_since: None,
        next_number: 1,
        steps: 0,
        skipped_kills: 0,
        trace: std::env::var_os("TANDEM_SIM_TRACE").is_some(),
        last_statuses: Vec::new(),
    };
    r.start()?;
    for op in &schedule.0 {
        r.say(&format!("{op}"));
        r.apply(op);
    }
    r.say("faults stop");
    r.faults_stop();
    r.check_ready()?;
    r.finish()?;
    r.check_lost()?;
    let duplicates = r.check_duplicates()?;
    r.check_stale_primary()?;
    Ok(Summary {
        settled: r
            .c
            .clients
            .iter()
            .filter(|c| c.kind == Kind::Publisher)
            .map(|c| c.settled.len())
            .sum(),
        duplicates,
        promotions: r.promotions.len(),
        skipped_kills: r.skipped_kills,
        virtual_time: r.c.now.duration_since(r.started),
    })
}

impl Run {
    fn start(&mut self) -> Result<(), Failure> {
        let promoted = self
            .c
            .run_until(Duration::from_secs(2), |c| c.promote(0).is_ok());
        if !promoted {
            return Err(failure("ready", "broker 0 was never promotable"));
        }
        self.promoted(0);
        let ok = self.c.run_until(Duration::from_secs(5), |c| {
            c.statuses() == ["active", "ready", "ready"]
        });
        if !ok {
            return Err(failure(
                "ready",
                format!("the cluster never ran: {:?}", self.c.statuses()),
            ));
        }
        Ok(())
    }

    /// The broker `target` names now (`None`: no primary to hit).
    fn resolve(&mut self, target: Target) -> Option<usize> {
        let primary = self.primary();
        match target {
            Target::Primary => primary,
            Target::Backup(k) => {
                let others: Vec<usize> = (0..3).filter(|b| Some(*b) != primary).collect();
                others.get(k % others.len()).copied()
            }
        }
    }

    /// The primary: a broker that is up and says active or recovering (the
    /// one promoted last, if two think so).
    fn primary(&mut self) -> Option<usize> {
        let up: Vec<usize> = (0..3)
            .filter(|&b| self.c.brokers[b].health == Health::Up)
            .collect();
        let mut primaries: Vec<usize> = up
            .into_iter()
            .filter(|&b| matches!(self.c.status(b).as_str(), "active" | "recovering"))
            .collect();
        primaries.sort_by_key(|&b| {
            self.promotions
                .iter()
                .rev()
                .position(|(_, p, _)| *p == b)
                .unwrap_or(usize::MAX)
        });
        primaries.first().copied()
    }

    /// With `TANDEM_SIM_TRACE`: `what`, at the virtual time.
    fn say(&self, what: &str) {
        if self.trace {
            let ms = self.c.now.duration_since(self.started).as_millis();
            eprintln!("{ms:>7} ms  {what}");
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Pause(ms) => self.advance(ms),
            Op::Publish {
                queue,
                count,
                per_step,
            } => {
                let first = self.next_number;
                self.next_number += count;
                let p = self.c.add_client(Kind::Publisher, &queue_name(queue), 0);
                let client = &mut self.c.clients[p];
                client.numbered(first, first + count - 1);
                client.per_step = Some(per_step);
                client.padding = 256;
            }
            Op::Consume { queue, broker } => {
                let consumer = self.c.add_client(Kind::Consumer, &queue_name(queue), 0);
                self.c.clients[consumer].broker = broker;
            }
            Op::Kill(target) => {
                let Some(b) = self.resolve(target) else {
                    return;
                };
                // N − 1 failures: some other up broker must hold everything.
                let holder = (0..3).any(|o| {
                    o != b
                        && self.c.brokers[o].health == Health::Up
                        && matches!(self.c.status(o).as_str(), "active" | "ready")
                });
                if holder {
                    self.c.kill(b);
                } else {
                    self.skipped_kills += 1;
                }
            }
            Op::Restart => {
                if let Some(b) = (0..3).find(|&b| self.c.brokers[b].health == Health::Dead) {
                    self.c.restart(b);
                    self.restarts.push((self.c.now, b));
                }
            }
            Op::Stall(target, ms) => {
                let Some(b) = self.resolve(target) else {
                    return;
                };
                if self.c.brokers[b].health != Health::Up {
                    return;
                }
                self.c.stall(b);
                self.advance(ms);
                self.c.resume(b);
            }
            Op::CutLink(target) => {
                if let Some(b) = self.resolve(target) {
                    self.c.cut_replication_link(b);
                }
            }
            Op::Partition(target, ms) => {
                let Some(b) = self.resolve(target) else {
                    return;
                };
                self.c.cut_off(b);
                self.advance(ms);
                self.c.heal();
            }
            Op::Delay {
                target,
                delay,
                during,
            } => {
                let Some(b) = self.resolve(target) else {
                    return;
                };
                self.c.delay(b, Duration::from_millis(delay));
                self.advance(during);
                self.c.delay(b, Duration::ZERO);
            }
            Op::Promote(target) => {
                if let Some(b) = self.resolve(target) {
                    if self.visible(b) && self.c.promote(b).is_ok() {
                        self.promoted(b);
                    }
                }
            }
        }
    }

    /// Runs `ms` of virtual time, the resource manager looking every
    /// [`RM_INTERVAL`] steps.
    fn advance(&mut self, ms: u64) {
        let end = self.c.now + Duration::from_millis(ms);
        while self.c.now < end {
            self.c.step();
            self.steps += 1;
            if self.steps.is_multiple_of(RM_INTERVAL) {
                self.resource_manager();
            }
        }
    }

    /// Whether the resource manager reaches broker `b`: it answers (up, not
    /// stopped) and is on the manager's side of a partition.
    fn visible(&self, b: usize) -> bool {
        self.c.brokers[b].health == Health::Up && !self.c.cut.contains(&b)
    }

    /// The OCF agent's promotion: with no primary in sight for
    /// [`RM_DETECTION`], promote what tandem-ha lets it, ready backups first.
    fn resource_manager(&mut self) {
        if self.trace {
            let now: Vec<String> = (0..3)
                .map(|b| match self.c.brokers[b].health {
                    Health::Up => {
                        let status = self.c.status(b);
                        let members: Vec<String> = self
                            .c
                            .members(b)
                            .into_iter()
                            .map(|(id, s)| format!("{id}={s}"))
                            .collect();
                        format!("{status} e{} {members:?}", self.c.epoch(b))
                    }
                    Health::Stalled => "stopped".into(),
                    Health::Dead => "dead".into(),
                })
                .collect();
            if now != self.last_statuses {
                self.say(&format!("statuses {now:?}"));
                self.last_statuses = now;
            }
        }
        let visible: Vec<usize> = (0..3).filter(|&b| self.visible(b)).collect();
        let statuses: Vec<(usize, String)> =
            visible.iter().map(|&b| (b, self.c.status(b))).collect();
        if statuses
            .iter()
            .any(|(_, s)| s == "active" || s == "recovering")
        {
            self.no_primary_since = None;
            return;
        }
        let since = *self.no_primary_since.get_or_insert(self.c.now);
        if self.c.now.duration_since(since) < RM_DETECTION {
            return;
        }
        let mut candidates: Vec<(usize, String)> = statuses;
        candidates.sort_by_key(|(_, s)| s != "ready");
        for (b, _) in candidates {
            if self.c.promote(b).is_ok() {
                self.promoted(b);
                self.no_primary_since = None;
                return;
            }
        }
    }

    /// Broker `b` was just promoted: its epoch, and what it holds (it may
    /// deliver any of it again).
    fn promoted(&mut self, b: usize) {
        let epoch = self.c.epoch(b);
        self.say(&format!("broker {b} promoted, epoch {epoch}"));
        self.promotions.push((self.c.now, b, epoch));
        for q in 0..QUEUES {
            for n in numbers(&self.c, b, &queue_name(q)) {
                *self.on_promoted.entry(n).or_default() += 1;
            }
        }
    }

    /// Every fault ends: partitions heal, slow links speed up, stopped
    /// brokers continue, dead ones start again.
    fn faults_stop(&mut self) {
        self.c.heal();
        for b in 0..3 {
            self.c.delay(b, Duration::ZERO);
            match self.c.brokers[b].health {
                Health::Stalled => self.c.resume(b),
                Health::Dead => {
                    self.c.restart(b);
                    self.restarts.push((self.c.now, b));
                }
                Health::Up => {}
            }
        }
    }

    /// Runs (the resource manager too) until `done` or `within` passed.
    fn run_until(&mut self, within: Duration, mut done: impl FnMut(&mut Run) -> bool) -> bool {
        let end = self.c.now + within;
        while self.c.now < end {
            if done(self) {
                return true;
            }
            self.advance(super::STEP.as_millis() as u64);
        }
        done(self)
    }

    fn check_ready(&mut self) -> Result<(), Failure> {
        let whole = self.run_until(HEAL_WITHIN, |r| {
            let Some(p) = r.c.active() else {
                return false;
            };
            let ready = r.c.members(p).iter().filter(|(_, s)| s == "ready").count();
            ready == 2 && (0..3).all(|b| matches!(r.c.status(b).as_str(), "active" | "ready"))
        });
        if whole {
            return Ok(());
        }
        let statuses = self.c.statuses();
        Err(failure(
            "ready",
            format!(
                "{HEAL_WITHIN:?} after the faults stopped the cluster is not whole: {statuses:?}"
            ),
        ))
    }

    /// Every publisher finishes; each queue is then consumed on the primary.
    fn finish(&mut self) -> Result<(), Failure> {
        let publishers: Vec<usize> = (0..self.c.clients.len())
            .filter(|&i| self.c.clients[i].kind == Kind::Publisher)
            .collect();
        let done = self.run_until(FINISH_WITHIN, |r| {
            publishers.iter().all(|&p| r.c.clients[p].all_settled())
        });
        if !done {
            let stuck: Vec<String> = publishers
                .iter()
                .filter(|&&p| !self.c.clients[p].all_settled())
                .map(|&p| format!("publisher {p}: {}", self.c.clients[p].describe()))
                .collect();
            return Err(failure(
                "ready",
                format!("publishers did not finish: {}", stuck.join("; ")),
            ));
        }
        let primary = self.c.active().unwrap_or(0);
        for q in 0..QUEUES {
            let consumer = self.c.add_client(Kind::Consumer, &queue_name(q), 0);
            self.c.clients[consumer].broker = primary;
        }
        self.run_until(FINISH_WITHIN, |r| r.c.lost().is_empty());
        Ok(())
    }

    fn check_lost(&self) -> Result<(), Failure> {
        let lost = self.c.lost();
        if lost.is_empty() {
            return Ok(());
        }
        Err(failure(
            "lost",
            format!(
                "{} settled messages never reached a consumer: {:?}",
                lost.len(),
                &lost[..lost.len().min(20)]
            ),
        ))
    }

    /// Each extra delivery of a number needs a window that allows it. The
    /// number of duplicates.
    fn check_duplicates(&self) -> Result<usize, Failure> {
        let mut resent: BTreeMap<u64, u32> = BTreeMap::new();
        let mut unacknowledged: BTreeMap<u64, u32> = BTreeMap::new();
        let mut delivered: BTreeMap<u64, u32> = BTreeMap::new();
        for client in &self.c.clients {
            for (&n, &k) in &client.resent {
                *resent.entry(n).or_default() += k;
            }
            for (&n, &k) in &client.unacknowledged_at_loss {
                *unacknowledged.entry(n).or_default() += k;
            }
            for &n in &client.received {
                *delivered.entry(n).or_default() += 1;
            }
        }
        let count = |m: &BTreeMap<u64, u32>, n: u64| m.get(&n).copied().unwrap_or(0);
        let mut duplicates = 0;
        let mut unexplained = Vec::new();
        for (&n, &times) in &delivered {
            let extra = times - 1;
            duplicates += extra as usize;
            let allowed =
                count(&resent, n) + count(&self.on_promoted, n) + count(&unacknowledged, n);
            if extra > allowed {
                unexplained.push(format!("{n} delivered {times} times ({allowed} allowed)"));
            }
        }
        if unexplained.is_empty() {
            return Ok(duplicates);
        }
        Err(failure(
            "duplicates",
            format!(
                "{} numbers delivered more often than their in-flight windows allow: {}",
                unexplained.len(),
                unexplained[..unexplained.len().min(10)].join(", ")
            ),
        ))
    }

    /// Every settlement came from a broker promoted (and not restarted
    /// since), and none from one whose epoch a newer primary had passed more
    /// than 2 × heartbeat before.
    fn check_stale_primary(&self) -> Result<(), Failure> {
        let fence = 2 * HEARTBEAT;
        for (i, client) in self.c.clients.iter().enumerate() {
            for &(at, raw) in &client.settlements {
                let b = raw % 3;
                let since_restart = self
                    .restarts
                    .iter()
                    .filter(|(t, r)| *r == b && *t < at)
                    .map(|(t, _)| *t)
                    .max();
                let promotion =
                    self.promotions.iter().rev().find(|(t, p, _)| {
                        *p == b && *t <= at && since_restart.is_none_or(|r| *t >= r)
                    });
                let ms = |t: Instant| t.duration_since(self.started).as_millis();
                let Some(&(_, _, epoch)) = promotion else {
                    return Err(failure(
                        "stale primary",
                        format!("client {i} had a publish settled by broker {b} at {} ms, which was not a promoted primary", ms(at)),
                    ));
                };
                if let Some(&(t, newer, e)) = self
                    .promotions
                    .iter()
                    .find(|(t, _, e)| *e > epoch && *t + fence < at)
                {
                    return Err(failure(
                        "stale primary",
                        format!(
                            "broker {b} (epoch {epoch}) settled a publish of client {i} at {} ms, {} ms after broker {newer} became primary of epoch {e}",
                            ms(at),
                            at.duration_since(t).as_millis()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn queue_name(q: u8) -> String {
    format!("q{q}")
}

/// The numbers in `queue` on broker `b`.
fn numbers(c: &Cluster, b: usize, queue: &str) -> Vec<u64> {
    c.queue_contents(b, queue)
        .iter()
        .filter_map(|(_, payload)| DecodedMessage::decode(payload).ok()?.body?.as_u64())
        .collect()
}

fn failure(checker: &'static str, detail: impl Into<String>) -> Failure {
    Failure {
        checker,
        detail: detail.into(),
    }
}

/// A shorter schedule that fails the same checker: ops are dropped, then
/// durations halved, while the failure stays. At most `budget` runs.
pub fn shrink(seed: u64, schedule: &Schedule, failed: &Failure, budget: usize) -> Schedule {
    let mut best = schedule.clone();
    let mut runs = 0;
    let same = |s: &Schedule, runs: &mut usize| {
        *runs += 1;
        matches!(run(seed, s), Err(f) if f.checker == failed.checker)
    };
    let mut progress = true;
    while progress && runs < budget {
        progress = false;
        let mut i = best.0.len();
        while i > 0 && runs < budget {
            i -= 1;
            let mut candidate = best.clone();
            candidate.0.remove(i);
            if same(&candidate, &mut runs) {
                best = candidate;
                progress = true;
            }
        }
        for i in 0..best.0.len() {
            if runs >= budget {
                break;
            }
            let Some(shorter) = halved(&best.0[i]) else {
                continue;
            };
            let mut candidate = best.clone();
            candidate.0[i] = shorter;
            if same(&candidate, &mut runs) {
                best = candidate;
                progress = true;
            }
        }
    }
    best
}

/// The op with its duration or count halved, if that changes it.
fn halved(op: &Op) -> Option<Op> {
    let half = |v: u64| (v > 20).then_some(v / 2);
    Some(match *op {
        Op::Pause(ms) => Op::Pause(half(ms)?),
        Op::Stall(t, ms) => Op::Stall(t, half(ms)?),
        Op::Partition(t, ms) => Op::Partition(t, half(ms)?),
        Op::Delay {
            target,
            delay,
            during,
        } => Op::Delay {
            target,
            delay,
            during: half(during)?,
        },
        Op::Publish {
            queue,
            count,
            per_step,
        } => Op::Publish {
            queue,
            count: half(count)?,
            per_step,
        },
        _ => return None,
    })
}

/// Runs `seeds`; for each failure, shrinks it and says how to replay it.
/// The failures' reports (empty: all passed).
pub fn search(seeds: impl IntoIterator<Item = u64>, shrink_budget: usize) -> Vec<String> {
    let mut failures = Vec::new();
    for seed in seeds {
        let schedule = Schedule::generate(seed);
        if let Err(failed) = run(seed, &schedule) {
            let small = shrink(seed, &schedule, &failed, shrink_budget);
            let replayed = run(seed, &small).err().unwrap_or_else(|| failed.clone());
            failures.push(format!(
                "seed {seed}: {failed}\n  schedule: {schedule}\n  shrunk to ({replayed}):\n  \
                 TANDEM_SIM_SEED={seed} TANDEM_SIM_REPLAY='{small}' \
                 cargo test -p tandem-ha --test cluster_search replay -- --nocapture"
            ));
        }
    }
    failures
}
