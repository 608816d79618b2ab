//! `tandem-stat --watch`: the view redrawn every few seconds in the terminal
//! (cleared between frames), like `watch qpid-stat -q`. Without a view flag a
//! frame shows the broker summary, the queues with their rates since the last
//! frame, the connections, and on an HA primary each backup's lag. Frames go
//! one after another (not cleared) when stdout is not a terminal.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use tandem::tools::{self, cell, get, table, ToolResult};
use tandem_shards::amqp::codec::Value;
use tandem_shards::management::ManagementClient;

use super::{broker_summary, show, url, view, Cli, CONNECTIONS};

/// Each queue's enqueues and dequeues at the last frame.
type Seen = HashMap<String, (u64, u64)>;

pub fn run(cli: &Cli) -> ToolResult<()> {
    let every = cli.watch.unwrap_or(2.0);
    if !(every.is_finite() && every > 0.0) {
        return Err(format!(
            "--watch: '{every}' must be a positive number of seconds"
        ));
    }
    if cli.frames == Some(0) {
        return Err("--frames: must be at least 1".into());
    }
    if cli.json {
        return Err("--watch draws tables; leave out --json".into());
    }
    tools::use_tls(&cli.tls)?;
    let every = Duration::from_secs_f64(every);
    let terminal = std::io::stdout().is_terminal();
    let mut mc: Option<ManagementClient> = None;
    let mut seen: Option<(Instant, Seen)> = None;
    let mut frame = 0u64;
    loop {
        frame += 1;
        let started = Instant::now();
        let body = match connected(&mut mc, cli) {
            Ok(c) => match draw(c, cli, &mut seen) {
                Ok(body) => body,
                Err(e) => {
                    // Connect again next time (the broker may be restarting).
                    mc = None;
                    format!("error: {e}\n")
                }
            },
            Err(e) => format!("error: {e}\n"),
        };
        let head = format!(
            "tandem-stat {}   every {}s   {}\n\n",
            url(cli),
            every.as_secs_f64(),
            clock()
        );
        let mut out = std::io::stdout().lock();
        let clear = if terminal { "\x1b[H\x1b[2J" } else { "" };
        let written = write!(out, "{clear}{head}{body}")
            .and_then(|()| if terminal { Ok(()) } else { writeln!(out) })
            .and_then(|()| out.flush());
        if written.is_err() {
            return Ok(()); // the reader went away (a pipe closed)
        }
        drop(out);
        if cli.frames.is_some_and(|n| frame >= n) {
            if let Some(c) = mc {
                c.close();
            }
            return Ok(());
        }
        std::thread::sleep(every.saturating_sub(started.elapsed()));
    }
}

fn connected<'a>(
    mc: &'a mut Option<ManagementClient>,
    cli: &Cli,
) -> ToolResult<&'a mut ManagementClient> {
    if mc.is_none() {
        *mc = Some(tools::connect(url(cli), cli.ha_admin, cli.timeout)?);
    }
    mc.as_mut().ok_or_else(|| "not connected".to_owned())
}

fn draw(
    mc: &mut ManagementClient,
    cli: &Cli,
    seen: &mut Option<(Instant, Seen)>,
) -> ToolResult<String> {
    if let Some(v) = view(cli) {
        return show(mc, v, cli);
    }
    let mut out = broker_summary(mc, false)?;
    out.push_str("\nQueues\n");
    out.push_str(&queues_with_rates(mc, cli, seen)?);
    out.push_str("\nConnections\n");
    out.push_str(&show(mc, &CONNECTIONS, cli)?);
    out.push_str(&backup_lag(mc)?);
    Ok(out)
}

/// The queue table with each queue's messages in and out per second since
/// the last frame.
fn queues_with_rates(
    mc: &mut ManagementClient,
    cli: &Cli,
    seen: &mut Option<(Instant, Seen)>,
) -> ToolResult<String> {
    let mut rows = tools::query(mc, "queue")?;
    rows.sort_by_key(|r| cell(get(r, "name")));
    if let Some(n) = cli.limit {
        rows.truncate(n);
    }
    let now = Instant::now();
    let counts = |r: &[(String, Value)]| {
        let n = |k| get(r, k).and_then(Value::as_u64).unwrap_or(0);
        (n("enqueues"), n("dequeues"))
    };
    let before = seen.as_ref();
    let rate = |name: &str, now_count: u64, pick: fn(&(u64, u64)) -> u64| match before {
        Some((at, before)) => match before.get(name) {
            Some(b) => {
                let secs = now.duration_since(*at).as_secs_f64().max(1e-3);
                format!("{:.0}", now_count.saturating_sub(pick(b)) as f64 / secs)
            }
            None => String::new(),
        },
        None => String::new(),
    };
    let headers = [
        "queue",
        "msg",
        "msgIn",
        "msgOut",
        "in/s",
        "out/s",
        "bytes",
        "cons",
        "unsettled",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let name = cell(get(r, "name"));
            let (enq, deq) = counts(r);
            vec![
                name.clone(),
                cell(get(r, "depth")),
                enq.to_string(),
                deq.to_string(),
                rate(&name, enq, |c| c.0),
                rate(&name, deq, |c| c.1),
                cell(get(r, "depth-bytes")),
                cell(get(r, "consumers")),
                cell(get(r, "awaiting-settlement")),
            ]
        })
        .collect();
    let next: Seen = rows
        .iter()
        .map(|r| (cell(get(r, "name")), counts(r)))
        .collect();
    *seen = Some((now, next));
    Ok(table::render(&headers, &cells))
}

/// On an HA primary: each backup's replication lag (the broker's `series`).
fn backup_lag(mc: &mut ManagementClient) -> ToolResult<String> {
    let b = tools::read(mc, "broker", None)?;
    let Some(Value::List(series)) = get(&b, "series") else {
        return Ok(String::new());
    };
    // Rows by backup address: messages, bytes, seconds, last heard.
    let mut rows: Vec<(String, [String; 4])> = Vec::new();
    let columns = [
        "tandem_ha_backup_lag_messages",
        "tandem_ha_backup_lag_bytes",
        "tandem_ha_backup_lag_seconds",
        "tandem_ha_backup_last_heard_seconds",
    ];
    for s in series {
        let Some(at) = s
            .map_get("name")
            .and_then(Value::as_str)
            .and_then(|n| columns.iter().position(|c| *c == n))
        else {
            continue;
        };
        let address = s
            .map_get("labels")
            .and_then(|l| l.map_get("address"))
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let value = match s.map_get("value") {
            Some(Value::Double(v)) if at < 2 => format!("{v:.0}"),
            Some(Value::Double(v)) => format!("{v:.3}"),
            _ => String::new(),
        };
        let row = match rows.iter().position(|(a, _)| *a == address) {
            Some(i) => &mut rows[i].1,
            None => {
                rows.push((address, Default::default()));
                &mut rows.last_mut().expect("just pushed").1
            }
        };
        row[at] = value;
    }
    if rows.is_empty() {
        return Ok(String::new());
    }
    let headers = ["backup", "lagMsgs", "lagBytes", "lag(s)", "heard(s) ago"];
    let cells: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(address, [m, b, s, h])| vec![address, m, b, s, h])
        .collect();
    Ok(format!(
        "\nReplication lag\n{}",
        table::render(&headers, &cells)
    ))
}

/// The wall clock as `HH:MM:SS UTC` (a frame's time, for the operator).
fn clock() -> String {
    let now = tandem::log::timestamp();
    format!("{} UTC", now.get(11..19).unwrap_or(&now))
}
