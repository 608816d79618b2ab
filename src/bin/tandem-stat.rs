//! `tandem-stat`: a Tandem broker's live counters, in the manner of `qpid-stat`.
//! `-b` alone (or no view flag) shows the broker summary; `-b URL` names the broker.

use std::process::ExitCode;

use clap::Parser;
use tandem::tools::{self, cell, get, json_rows, query, table, ToolResult};
use tandem_shards::amqp::codec::Value;
use tandem_shards::management::ManagementClient;

#[derive(Parser)]
#[command(
    name = "tandem-stat",
    version,
    about = "Show a Tandem broker's statistics"
)]
struct Cli {
    /// Broker URL; given without a value, selects the broker summary view.
    #[arg(short = 'b', long = "broker", value_name = "URL", num_args = 0..=1, default_missing_value = "")]
    broker: Option<String>,
    /// Broker summary (the default view).
    #[arg(short = 'g', long = "general")]
    general: bool,
    /// Queues.
    #[arg(short = 'q', long = "queues")]
    queues: bool,
    /// Exchanges.
    #[arg(short = 'e', long = "exchanges")]
    exchanges: bool,
    /// Connections.
    #[arg(short = 'c', long = "connections")]
    connections: bool,
    /// Sort rows by this column (e.g. msg, msgIn, bytes, cons; descending for numbers).
    #[arg(short = 'S', long = "sort-by", value_name = "FIELD")]
    sort: Option<String>,
    /// Show at most this many rows.
    #[arg(short = 'L', long = "limit", value_name = "N")]
    limit: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Mark the connection as an HA admin connection (so a backup answers).
    #[arg(long = "ha-admin")]
    ha_admin: bool,
    /// Seconds to wait for the broker.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    timeout: f64,
    /// Redraw the view every SECONDS (default 2) until interrupted, like
    /// `watch qpid-stat -q`; without a view flag: the summary, queues (with
    /// rates), connections and each backup's replication lag.
    #[arg(short = 'w', long = "watch", value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
    watch: Option<f64>,
    /// With --watch: stop after this many frames.
    #[arg(long, value_name = "N")]
    frames: Option<u64>,
    #[command(flatten)]
    tls: tools::TlsArgs,
}

/// A view: title columns and the management attribute each shows.
struct View {
    entity: &'static str,
    columns: &'static [(&'static str, &'static str)],
}

const QUEUES: View = View {
    entity: "queue",
    columns: &[
        ("queue", "name"),
        ("dur", "durable"),
        ("autoDel", "auto-delete"),
        ("msg", "depth"),
        ("msgIn", "enqueues"),
        ("msgOut", "dequeues"),
        ("bytes", "depth-bytes"),
        ("acq", "acquired"),
        ("cons", "consumers"),
        ("redeliv", "redeliveries"),
        ("unsettled", "awaiting-settlement"),
        ("shard", "shard"),
    ],
};

const EXCHANGES: View = View {
    entity: "exchange",
    columns: &[
        ("exchange", "name"),
        ("type", "type"),
        ("dur", "durable"),
        ("bind", "bindings"),
        ("msgIn", "routed"),
        ("msgDrop", "dropped"),
    ],
};

const CONNECTIONS: View = View {
    entity: "connection",
    columns: &[
        ("connection", "name"),
        ("address", "address"),
        ("user", "user"),
        ("container", "container-id"),
        ("shard", "shard"),
        ("framesIn", "frames-in"),
        ("framesOut", "frames-out"),
        ("msgIn", "messages-in"),
        ("msgOut", "messages-out"),
    ],
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.watch.is_some() || cli.frames.is_some() {
        return match watch::run(&cli) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => tools::fail("tandem-stat", &e),
        };
    }
    match run(&cli) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => tools::fail("tandem-stat", &e),
    }
}

fn run(cli: &Cli) -> ToolResult<String> {
    tools::use_tls(&cli.tls)?;
    let mut mc = tools::connect(url(cli), cli.ha_admin, cli.timeout)?;
    let out = match view(cli) {
        Some(v) => show(&mut mc, v, cli),
        None => broker_summary(&mut mc, cli.json),
    };
    mc.close();
    out
}

fn url(cli: &Cli) -> &str {
    match cli.broker.as_deref() {
        None | Some("") => "localhost:5672",
        Some(u) => u,
    }
}

/// The view a flag chose (`None`: the broker summary).
fn view(cli: &Cli) -> Option<&'static View> {
    if cli.queues {
        Some(&QUEUES)
    } else if cli.exchanges {
        Some(&EXCHANGES)
    } else if cli.connections {
        Some(&CONNECTIONS)
    } else {
        None
    }
}

#[path = "tandem-stat/watch.rs"]
mod watch;

fn broker_summary(mc: &mut ManagementClient, as_json: bool) -> ToolResult<String> {
    let b = tools::read(mc, "broker", None)?;
    if as_json {
        return Ok(format!("{}\n", json_rows(&[b])));
    }
    let keys = [
        ("broker", "name"),
        ("version", "version"),
        ("uptime(s)", "uptime"),
        ("shards", "shards"),
        ("conns", "connections"),
        ("queues", "queues"),
        ("exchanges", "exchanges"),
        ("msgDepth", "queue-depth"),
        ("bytesDepth", "queue-bytes"),
    ];
    let headers: Vec<&str> = keys.iter().map(|(h, _)| *h).collect();
    let row: Vec<String> = keys.iter().map(|(_, k)| cell(get(&b, k))).collect();
    let mut out = table::render(&headers, &[row]);
    // The stall detector, when it is on (stall-threshold): polls over the
    // threshold, and the longest poll with the task that took it.
    if get(&b, "longest-poll-us")
        .and_then(Value::as_u64)
        .is_some_and(|us| us > 0)
    {
        let stalls = [
            ("stalls", "executor-stalls"),
            ("longestPoll(us)", "longest-poll-us"),
            ("in", "longest-poll-at"),
        ];
        let headers: Vec<&str> = stalls.iter().map(|(h, _)| *h).collect();
        let row: Vec<String> = stalls.iter().map(|(_, k)| cell(get(&b, k))).collect();
        out.push('\n');
        out.push_str(&table::render(&headers, &[row]));
    }
    // A broker of a cluster: what its snapshots sent backups catching up,
    // and what the backups already held (an incremental catch-up).
    let catch_up = [
        ("catchupMsgs", "ha-catch-up-messages"),
        ("catchupBytes", "ha-catch-up-bytes"),
        ("catchupKept", "ha-catch-up-kept"),
    ];
    if catch_up.iter().any(|(_, k)| get(&b, k).is_some()) {
        let headers: Vec<&str> = catch_up.iter().map(|(h, _)| *h).collect();
        let row: Vec<String> = catch_up.iter().map(|(_, k)| cell(get(&b, k))).collect();
        out.push('\n');
        out.push_str(&table::render(&headers, &[row]));
        // A primary: the same per backup.
        if let Ok(ha) = tools::read(mc, "ha-broker", None) {
            if let Some(Value::List(members)) = get(&ha, "members") {
                let columns = [
                    ("backup", "address"),
                    ("status", "status"),
                    ("catchupMsgs", "catch-up-messages"),
                    ("catchupBytes", "catch-up-bytes"),
                    ("catchupKept", "catch-up-kept"),
                ];
                let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
                let rows: Vec<Vec<String>> = members
                    .iter()
                    .map(|m| columns.iter().map(|(_, k)| cell(m.map_get(k))).collect())
                    .collect();
                if !rows.is_empty() {
                    out.push('\n');
                    out.push_str(&table::render(&headers, &rows));
                }
            }
        }
    }
    Ok(out)
}

fn show(mc: &mut ManagementClient, view: &View, cli: &Cli) -> ToolResult<String> {
    let mut rows = query(mc, view.entity)?;
    if let Some(field) = &cli.sort {
        // Accept the column title (msgIn) or the attribute name (enqueues).
        let attr = view
            .columns
            .iter()
            .find(|(title, attr)| {
                title.eq_ignore_ascii_case(field) || attr.eq_ignore_ascii_case(field)
            })
            .map(|(_, attr)| *attr)
            .ok_or_else(|| {
                let names: Vec<&str> = view.columns.iter().map(|(t, _)| *t).collect();
                format!("-S {field}: unknown field; one of {}", names.join(", "))
            })?;
        rows.sort_by(|a, b| {
            let (x, y) = (get(a, attr), get(b, attr));
            match (x.and_then(Value::as_u64), y.and_then(Value::as_u64)) {
                (Some(x), Some(y)) => y.cmp(&x),
                _ => cell(x).cmp(&cell(y)),
            }
        });
    }
    if let Some(n) = cli.limit {
        rows.truncate(n);
    }
    if cli.json {
        return Ok(format!("{}\n", json_rows(&rows)));
    }
    let headers: Vec<&str> = view.columns.iter().map(|(t, _)| *t).collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| view.columns.iter().map(|(_, a)| cell(get(r, a))).collect())
        .collect();
    let mut out = table::render(&headers, &cells);
    if view.entity == "queue" {
        out.push_str(&replicas(&rows));
    }
    Ok(out)
}

/// Queue replicas (`tandem-ha replicate`): what each feed is doing, after
/// the queue table; nothing when no queue is one.
fn replicas(rows: &[Vec<(String, Value)>]) -> String {
    const COLUMNS: [(&str, &str); 7] = [
        ("replica", "name"),
        ("of", "replica-of"),
        ("state", "replica-state"),
        ("attached", "replica-address"),
        ("lag", "replica-lag"),
        ("received", "replica-received"),
        ("error", "replica-error"),
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .filter(|r| matches!(get(r, "replica-of"), Some(Value::String(_))))
        .map(|r| COLUMNS.iter().map(|(_, a)| cell(get(r, a))).collect())
        .collect();
    if cells.is_empty() {
        return String::new();
    }
    let headers: Vec<&str> = COLUMNS.iter().map(|(t, _)| *t).collect();
    format!("\nQueue replicas\n{}", table::render(&headers, &cells))
}
