//! The cluster status behind the HTTP status page (`/` and `/status.json`):
//! a thread of its own (`http-status`) asks every broker of the cluster, over
//! AMQP admin links as `tandem-ha status --all` does, for its HA status,
//! members, backups' lag and queues, once a second, and keeps the last
//! answer. Any broker's page therefore shows the whole cluster, and a broker
//! that does not answer shows as unreachable, with why.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tandem_shards::amqp::codec::Value;
use tandem_shards::client::{Client, ClientOptions};
use tandem_shards::management::ManagementClient;
use tandem_shards::url::BrokerUrl;

use crate::tools::{get, query, read};

/// How often the cluster is asked.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long one broker may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Queue rates are over this much history.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Whom to ask: every broker's address (one for a stand-alone broker), with
/// the credentials and TLS of the cluster's own links.
#[derive(Clone)]
pub struct Gathering {
    pub brokers: Vec<BrokerUrl>,
    /// This broker's id (its entry is marked).
    pub broker_id: String,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// What `/status.json` says.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ClusterStatus {
    /// When it was gathered, in ms since the Unix epoch (0: not yet).
    pub gathered_at_ms: u64,
    pub refresh_ms: u64,
    pub brokers: Vec<BrokerView>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct BrokerView {
    pub address: String,
    pub reachable: bool,
    pub error: Option<String>,
    /// standalone, joining, catchup, ready, recovering or active.
    pub status: Option<String>,
    pub broker_id: Option<String>,
    pub epoch: Option<u64>,
    /// The broker serving this page.
    pub this_broker: bool,
    /// The cluster's members as this broker knows them.
    pub members: Vec<MemberView>,
    /// On a primary: each backup's replication lag.
    pub backups: Vec<BackupLag>,
    pub queues: Vec<QueueView>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MemberView {
    pub broker_id: String,
    pub address: String,
    pub status: String,
}

#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct BackupLag {
    pub broker_id: String,
    pub address: String,
    pub messages: f64,
    pub bytes: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct QueueView {
    pub name: String,
    pub depth: u64,
    pub enqueues: u64,
    pub dequeues: u64,
    pub consumers: u64,
    pub awaiting_settlement: u64,
    /// Messages in and out per second over the last minute (`None` until
    /// there are two samples a second apart).
    pub in_per_s: Option<f64>,
    pub out_per_s: Option<f64>,
}

/// The latest status, shared with the HTTP thread.
pub type Shared = Arc<Mutex<ClusterStatus>>;

/// Starts the gathering thread; its results appear in the returned handle.
pub fn start(gathering: Gathering) -> Result<Shared, String> {
    let shared: Shared = Arc::default();
    let out = shared.clone();
    std::thread::Builder::new()
        .name("http-status".into())
        .spawn(move || gather_forever(gathering, out))
        .map_err(|e| format!("http-port: cannot start the status thread: {e}"))?;
    Ok(shared)
}

fn gather_forever(gathering: Gathering, out: Shared) {
    let mut links: HashMap<String, ManagementClient> = HashMap::new();
    let mut history = Rates::default();
    loop {
        let started = Instant::now();
        let brokers = gathering
            .brokers
            .iter()
            .map(|url| {
                let address = shown_address(url);
                let mut view = match ask(&mut links, &address, url, &gathering) {
                    Ok(view) => view,
                    Err(e) => {
                        links.remove(&address);
                        BrokerView {
                            error: Some(e),
                            ..Default::default()
                        }
                    }
                };
                view.address = address;
                view.this_broker = gathering.brokers.len() == 1
                    || view.broker_id.as_deref() == Some(&gathering.broker_id);
                history.apply(&view.address, &mut view.queues, started);
                view
            })
            .collect();
        let status = ClusterStatus {
            gathered_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            refresh_ms: REFRESH.as_millis() as u64,
            brokers,
        };
        *out.lock().unwrap_or_else(|e| e.into_inner()) = status;
        std::thread::sleep(REFRESH.saturating_sub(started.elapsed()));
    }
}

/// `host:port` of a one-address URL, without credentials.
fn shown_address(url: &BrokerUrl) -> String {
    url.addrs
        .first()
        .map(|a| a.socket_string())
        .unwrap_or_default()
}

/// One broker's view, over its kept admin link (made anew if there is none).
fn ask(
    links: &mut HashMap<String, ManagementClient>,
    address: &str,
    url: &BrokerUrl,
    gathering: &Gathering,
) -> Result<BrokerView, String> {
    if !links.contains_key(address) {
        let opts = ClientOptions {
            properties: vec![("qpid.ha-admin".to_owned(), Value::Bool(true))],
            timeout: Some(ANSWER_TIMEOUT),
            container_id: None,
            tls: gathering.tls.clone(),
        };
        let client = Client::connect(url, &opts).map_err(|e| e.to_string())?;
        let mc = ManagementClient::new(client, ANSWER_TIMEOUT).map_err(|e| e.to_string())?;
        links.insert(address.to_owned(), mc);
    }
    let mc = links
        .get_mut(address)
        .ok_or_else(|| "not connected".to_owned())?;
    let mut view = BrokerView {
        reachable: true,
        ..Default::default()
    };
    // A stand-alone broker has no ha-broker entity.
    match read(mc, "ha-broker", None) {
        Ok(ha) => {
            let text = |k| get(&ha, k).and_then(Value::as_str).map(str::to_owned);
            view.status = text("status");
            view.broker_id = text("broker-id");
            view.epoch = get(&ha, "epoch").and_then(Value::as_u64);
            if let Some(Value::List(members)) = get(&ha, "members") {
                view.members = members.iter().filter_map(member).collect();
            }
        }
        Err(_) => view.status = Some("standalone".into()),
    }
    let broker = read(mc, "broker", None)?;
    if let Some(Value::List(series)) = get(&broker, "series") {
        view.backups = backup_lag(series);
    }
    // Temporary queues (reply queues: the status threads' own among them)
    // are not the cluster's state.
    view.queues = query(mc, "queue")?
        .iter()
        .filter(|q| get(q, "auto-delete") != Some(&Value::Bool(true)))
        .map(|q| {
            let n = |k| get(q, k).and_then(Value::as_u64).unwrap_or(0);
            QueueView {
                name: get(q, "name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                depth: n("depth"),
                enqueues: n("enqueues"),
                dequeues: n("dequeues"),
                consumers: n("consumers"),
                awaiting_settlement: n("awaiting-settlement"),
                in_per_s: None,
                out_per_s: None,
            }
        })
        .collect();
    view.queues.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(view)
}

fn member(m: &Value) -> Option<MemberView> {
    let text = |k| m.map_get(k).and_then(Value::as_str).map(str::to_owned);
    Some(MemberView {
        broker_id: text("broker-id")?,
        address: text("address")?,
        status: text("status")?,
    })
}

/// Each backup's lag from the broker's `series` attribute.
fn backup_lag(series: &[Value]) -> Vec<BackupLag> {
    let mut out: Vec<BackupLag> = Vec::new();
    for s in series {
        let name = s.map_get("name").and_then(Value::as_str).unwrap_or("");
        let label = |k| {
            s.map_get("labels")
                .and_then(|l| l.map_get(k))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let value = match s.map_get("value") {
            Some(Value::Double(v)) => *v,
            _ => continue,
        };
        let field: fn(&mut BackupLag) -> &mut f64 = match name {
            "tandem_ha_backup_lag_messages" => |b| &mut b.messages,
            "tandem_ha_backup_lag_bytes" => |b| &mut b.bytes,
            "tandem_ha_backup_lag_seconds" => |b| &mut b.seconds,
            _ => continue,
        };
        let broker_id = label("broker_id");
        let at = match out.iter().position(|b| b.broker_id == broker_id) {
            Some(at) => at,
            None => {
                out.push(BackupLag {
                    broker_id,
                    address: label("address"),
                    ..Default::default()
                });
                out.len() - 1
            }
        };
        *field(&mut out[at]) = value;
    }
    out
}

/// When, and a queue's enqueues and dequeues then.
type Samples = VecDeque<(Instant, u64, u64)>;

/// Each queue's enqueue and dequeue counts over the last minute, per broker.
#[derive(Default)]
struct Rates {
    seen: HashMap<(String, String), Samples>,
}

impl Rates {
    /// Notes `queues`' counts at `now` and sets their rates.
    fn apply(&mut self, broker: &str, queues: &mut [QueueView], now: Instant) {
        for q in queues.iter_mut() {
            let samples = self
                .seen
                .entry((broker.to_owned(), q.name.clone()))
                .or_default();
            samples.push_back((now, q.enqueues, q.dequeues));
            while samples
                .front()
                .is_some_and(|(t, _, _)| now.duration_since(*t) > RATE_WINDOW)
            {
                samples.pop_front();
            }
            if let (Some(first), Some(last)) = (samples.front(), samples.back()) {
                let secs = last.0.duration_since(first.0).as_secs_f64();
                if secs >= 1.0 {
                    q.in_per_s = Some(last.1.saturating_sub(first.1) as f64 / secs);
                    q.out_per_s = Some(last.2.saturating_sub(first.2) as f64 / secs);
                }
            }
        }
        // Queues gone from a broker stop being remembered.
        self.seen
            .retain(|(b, name), _| b != broker || queues.iter().any(|q| &q.name == name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_over_the_last_minute_once_a_second_apart() {
        let mut rates = Rates::default();
        let t0 = Instant::now();
        let queue = |enqueues, dequeues| QueueView {
            name: "q".into(),
            enqueues,
            dequeues,
            ..Default::default()
        };
        let mut qs = vec![queue(100, 0)];
        rates.apply("b", &mut qs, t0);
        assert_eq!(qs[0].in_per_s, None);
        let mut qs = vec![queue(300, 50)];
        rates.apply("b", &mut qs, t0 + Duration::from_secs(2));
        assert_eq!(qs[0].in_per_s, Some(100.0));
        assert_eq!(qs[0].out_per_s, Some(25.0));
        // 70 s on, the earlier samples are out of the window: one is left.
        let mut qs = vec![queue(1000, 50)];
        rates.apply("b", &mut qs, t0 + Duration::from_secs(70));
        assert_eq!(qs[0].in_per_s, None);
        let mut qs = vec![queue(1100, 50)];
        rates.apply("b", &mut qs, t0 + Duration::from_secs(72));
        assert_eq!(qs[0].in_per_s, Some(50.0));
        // A deleted queue is forgotten.
        rates.apply("b", &mut [], t0 + Duration::from_secs(71));
        assert!(rates.seen.is_empty());
    }

    #[test]
    fn backup_lag_is_read_from_the_series_by_backup() {
        let series = |name: &str, id: &str, v: f64| {
            Value::Map(vec![
                (Value::string("name"), Value::string(name)),
                (
                    Value::string("labels"),
                    Value::Map(vec![
                        (Value::string("broker_id"), Value::string(id)),
                        (Value::string("address"), Value::string("h:1")),
                    ]),
                ),
                (Value::string("value"), Value::Double(v)),
            ])
        };
        let lag = backup_lag(&[
            series("tandem_ha_backup_lag_messages", "b2", 5.0),
            series("tandem_ha_backup_lag_seconds", "b2", 0.5),
            series("tandem_ha_backup_lag_messages", "b3", 0.0),
            series("tandem_ha_member_status", "b3", 1.0),
        ]);
        assert_eq!(lag.len(), 2);
        assert_eq!((lag[0].messages, lag[0].seconds), (5.0, 0.5));
        assert_eq!(lag[1].broker_id, "b3");
    }
}
