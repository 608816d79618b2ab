//! `tandem-config`: create, delete and list queues, exchanges and bindings, in the
//! manner of `qpid-config`. Exit status 0 on success; 1 with a one-line reason.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tandem::tools::{self, call, cell, get, json_rows, query, table, BrokerArgs, ToolResult};
use tandem_shards::amqp::codec::Value;
use tandem_shards::management::{ManagementClient, Request};

#[derive(Parser)]
#[command(
    name = "tandem-config",
    version,
    about = "Configure a Tandem broker: queues, exchanges, bindings"
)]
struct Cli {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Print lists as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// After a change, wait until every backup that was ready has applied it
    /// (default: the primary's ha-sync-config).
    #[arg(long, global = true, conflicts_with = "no_sync")]
    sync: bool,
    /// Do not wait for the backups, whatever ha-sync-config says.
    #[arg(long, global = true)]
    no_sync: bool,
    /// Seconds --sync waits for the backups before it fails naming them.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, global = true)]
    sync_timeout: f64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// List queues.
    Queues,
    /// List exchanges.
    Exchanges,
    /// List bindings.
    Bindings,
    /// Add a queue or an exchange.
    Add {
        #[command(subcommand)]
        what: Add,
    },
    /// Delete a queue or an exchange.
    Del {
        #[command(subcommand)]
        what: Del,
    },
    /// Bind a queue to an exchange: bind EXCHANGE QUEUE [KEY] [all|any k=v ...]
    Bind(BindArgs),
    /// Remove a binding (same arguments as bind).
    Unbind(BindArgs),
    /// Read the broker's ACL file again (qpidd's reloadACLFile).
    ReloadAcl,
    /// Read the ACL, the users file and the TLS certificate again (what SIGHUP does).
    Reload,
}

#[derive(Subcommand)]
enum Add {
    /// add queue NAME [options]
    Queue {
        name: String,
        /// Keep the queue (and its persistent messages) across restarts.
        #[arg(long)]
        durable: bool,
        /// Replication level for HA: none, configuration or all.
        #[arg(long, value_name = "LEVEL")]
        replicate: Option<String>,
        /// Maximum bytes queued (0: unlimited).
        #[arg(long, value_name = "BYTES", allow_negative_numbers = true)]
        max_queue_size: Option<String>,
        /// Maximum messages queued (0: unlimited).
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        max_queue_count: Option<String>,
        /// What a full queue does: flow (stall publishers), reject, or ring (drop oldest).
        #[arg(long, value_name = "POLICY")]
        limit_policy: Option<String>,
        /// Make a last-value queue keyed on this application property.
        #[arg(long, value_name = "KEY")]
        lvq_key: Option<String>,
        /// Make it a replica of the queue of the same name on another broker
        /// (as `tandem-ha replicate` does): waits up to --timeout for the
        /// first attempt, and deletes the new queue again if it fails.
        #[arg(long, value_name = "REMOTE")]
        start_replica: Option<String>,
    },
    /// add exchange TYPE NAME [options]  (TYPE: direct, topic, fanout, headers)
    Exchange {
        #[arg(value_name = "TYPE")]
        kind: String,
        name: String,
        #[arg(long)]
        durable: bool,
        #[arg(long, value_name = "LEVEL")]
        replicate: Option<String>,
    },
}

#[derive(Subcommand)]
enum Del {
    /// del queue NAME [--force]
    Queue {
        name: String,
        /// Delete even if the queue has messages or consumers.
        #[arg(long)]
        force: bool,
    },
    /// del exchange NAME
    Exchange { name: String },
}

#[derive(clap::Args)]
struct BindArgs {
    exchange: String,
    queue: String,
    /// Binding key; for a headers exchange, then `all` or `any` and `key=value` pairs.
    #[arg(num_args = 0..)]
    rest: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(out) => {
            if !out.is_empty() {
                print!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => tools::fail("tandem-config", &e),
    }
}

fn run(cli: &Cli) -> ToolResult<String> {
    let mut mc = cli.broker.connect()?;
    let out = match &cli.command {
        None => summary(&mut mc),
        Some(Command::Queues) => list(&mut mc, "queue", cli.json),
        Some(Command::Exchanges) => list(&mut mc, "exchange", cli.json),
        Some(Command::Bindings) => list(&mut mc, "binding", cli.json),
        Some(Command::Add { what }) => add(&mut mc, what)
            .and_then(|_| start_replica(cli, &mut mc, what))
            .and_then(|out| Ok(out + &synced(cli, &mut mc)?)),
        Some(Command::Del { what }) => del(&mut mc, what).and_then(|_| synced(cli, &mut mc)),
        Some(Command::Bind(b)) => bind(&mut mc, "CREATE", b).and_then(|_| synced(cli, &mut mc)),
        Some(Command::Unbind(b)) => bind(&mut mc, "DELETE", b).and_then(|_| synced(cli, &mut mc)),
        Some(Command::ReloadAcl) => reload(&mut mc, "reloadACLFile", "acl"),
        Some(Command::Reload) => reload(&mut mc, "RELOAD", "broker"),
    };
    mc.close();
    out
}

/// `add queue --start-replica REMOTE`: the queue just created replicates
/// REMOTE; if the first attempt failed (and was undone) it is deleted again
/// (this command created it, and a replica takes no local messages). One
/// that is still trying is left to go on.
fn start_replica(cli: &Cli, mc: &mut ManagementClient, what: &Add) -> ToolResult<String> {
    let Add::Queue {
        name,
        start_replica: Some(remote),
        ..
    } = what
    else {
        return Ok(String::new());
    };
    let timeout = std::time::Duration::from_secs_f64(cli.broker.timeout.max(0.0));
    tools::replica::replicate(mc, name, remote, timeout).inspect_err(|_| {
        let undone = tools::read(mc, "queue", Some(name))
            .is_ok_and(|row| matches!(get(&row, "replica-of"), None | Some(Value::Null)));
        if undone {
            let body = Value::Map(vec![(Value::string("force"), Value::Bool(true))]);
            let _ = call(mc, Request::new("DELETE", "queue", Some(name), body));
        }
    })
}

/// After a change: with `--sync` (or the primary's `ha-sync-config`), waits
/// until every backup that is ready now has applied it, or fails naming the
/// ones that did not within `--sync-timeout`.
fn synced(cli: &Cli, mc: &mut ManagementClient) -> ToolResult<String> {
    let wanted = if cli.no_sync {
        false
    } else if cli.sync {
        true
    } else {
        match tools::read(mc, "ha-broker", None) {
            Ok(attrs) => matches!(get(&attrs, "sync-config"), Some(Value::Bool(true))),
            // Not in a cluster: nothing to wait for.
            Err(_) => false,
        }
    };
    if !wanted {
        return Ok(String::new());
    }
    let empty = || Value::Map(Vec::new());
    let resp = mc
        .call(&Request::new("SYNC", "ha-broker", None, empty()))
        .map_err(|e| e.to_string())?;
    match resp.status {
        s if (200..300).contains(&s) => {}
        404 => return Ok(String::new()), // a stand-alone broker has no backups
        _ => {
            return Err(format!(
                "--sync: {} (status {})",
                resp.description, resp.status
            ))
        }
    }
    let Some(id) = resp.body.map_get("id").and_then(Value::as_u64) else {
        return Err("--sync: the broker did not say which sync to wait for".into());
    };
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_secs_f64(cli.sync_timeout.max(0.0));
    let body = Value::Map(vec![(Value::string("id"), Value::Ulong(id))]);
    loop {
        let status = call(
            mc,
            Request::new("SYNC-STATUS", "ha-broker", None, body.clone()),
        )?;
        if matches!(status.body.map_get("done"), Some(Value::Bool(true))) {
            return Ok(String::new());
        }
        if std::time::Instant::now() >= deadline {
            let missing: Vec<String> = match status.body.map_get("missing") {
                Some(Value::List(l)) => l.iter().map(|v| cell(Some(v))).collect(),
                _ => Vec::new(),
            };
            return Err(format!(
                "--sync: the change is made on the primary, but backup {} did not confirm it within {}s",
                missing.join(", "),
                cli.sync_timeout
            ));
        }
        // Ask again; the loop ends at the deadline above.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A reload: one line per part read again.
fn reload(mc: &mut ManagementClient, operation: &str, entity: &str) -> ToolResult<String> {
    let resp = call(
        mc,
        Request::new(operation, entity, None, Value::Map(Vec::new())),
    )?;
    let Value::Map(parts) = &resp.body else {
        return Ok(String::new());
    };
    let lines: String = parts
        .iter()
        .map(|(_, text)| format!("{}\n", cell(Some(text))))
        .collect();
    Ok(if lines.is_empty() {
        "nothing to reload (no acl-file, users-file or TLS certificate)\n".into()
    } else {
        lines
    })
}

fn summary(mc: &mut ManagementClient) -> ToolResult<String> {
    let broker = tools::read(mc, "broker", None)?;
    Ok(format!(
        "Total Exchanges: {}\n   Total Queues: {}\n",
        cell(get(&broker, "exchanges")),
        cell(get(&broker, "queues"))
    ))
}

fn list(mc: &mut ManagementClient, entity: &str, as_json: bool) -> ToolResult<String> {
    let rows = query(mc, entity)?;
    if as_json {
        return Ok(format!("{}\n", json_rows(&rows)));
    }
    let (headers, keys): (Vec<&str>, Vec<&str>) = match entity {
        "queue" => (
            vec![
                "Queue Name",
                "Durable",
                "Max Count",
                "Max Size",
                "Policy",
                "LVQ Key",
                "Replicate",
                "Depth",
            ],
            vec![
                "name",
                "durable",
                "max-queue-count",
                "max-queue-size",
                "limit-policy",
                "lvq-key",
                "replicate",
                "depth",
            ],
        ),
        "exchange" => (
            vec!["Type", "Exchange Name", "Durable", "Replicate", "Bindings"],
            vec!["type", "name", "durable", "replicate", "bindings"],
        ),
        _ => (
            vec!["Exchange", "Queue", "Key", "Arguments"],
            vec!["exchange", "queue", "key", "arguments"],
        ),
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            keys.iter()
                .map(|k| match get(r, k) {
                    Some(v @ Value::Map(_)) => tools::json(v),
                    v => cell(v),
                })
                .collect()
        })
        .collect();
    Ok(table::render(&headers, &cells))
}

fn add(mc: &mut ManagementClient, what: &Add) -> ToolResult<String> {
    let req = match what {
        Add::Queue {
            name,
            durable,
            replicate,
            max_queue_size,
            max_queue_count,
            limit_policy,
            lvq_key,
            start_replica,
        } => {
            if let Some(remote) = start_replica {
                // Checked before anything is created.
                remote
                    .parse::<tandem_shards::url::BrokerUrl>()
                    .map_err(|e| format!("--start-replica '{remote}': {e}"))?;
                if tools::read(mc, "queue", Some(name)).is_ok() {
                    return Err(format!(
                        "queue '{name}' exists already: start its replica with tandem-ha replicate {name} {remote}"
                    ));
                }
            }
            let mut attrs = vec![(Value::string("durable"), Value::Bool(*durable))];
            let mut put = |k: &str, v: &Option<String>| {
                if let Some(v) = v {
                    attrs.push((Value::string(k), Value::string(v)));
                }
            };
            put("replicate", replicate);
            put("max-queue-size", max_queue_size);
            put("max-queue-count", max_queue_count);
            put("limit-policy", limit_policy);
            put("lvq-key", lvq_key);
            Request::new("CREATE", "queue", Some(name), Value::Map(attrs))
        }
        Add::Exchange {
            kind,
            name,
            durable,
            replicate,
        } => {
            let mut attrs = vec![
                (Value::string("type"), Value::string(kind)),
                (Value::string("durable"), Value::Bool(*durable)),
            ];
            if let Some(r) = replicate {
                attrs.push((Value::string("replicate"), Value::string(r)));
            }
            Request::new("CREATE", "exchange", Some(name), Value::Map(attrs))
        }
    };
    call(mc, req).map(|_| String::new())
}

fn del(mc: &mut ManagementClient, what: &Del) -> ToolResult<String> {
    let req = match what {
        Del::Queue { name, force } => Request::new(
            "DELETE",
            "queue",
            Some(name),
            Value::Map(vec![(Value::string("force"), Value::Bool(*force))]),
        ),
        Del::Exchange { name } => {
            Request::new("DELETE", "exchange", Some(name), Value::Map(Vec::new()))
        }
    };
    call(mc, req).map(|_| String::new())
}

fn bind(mc: &mut ManagementClient, operation: &str, b: &BindArgs) -> ToolResult<String> {
    let mut rest = b.rest.iter();
    // The key is optional before `all|any k=v...` (a headers binding has none).
    let keyless = b.rest.len() > 1 && matches!(b.rest[0].as_str(), "all" | "any");
    let key = if keyless { None } else { rest.next().cloned() }.unwrap_or_default();
    let mut attrs = vec![
        (Value::string("exchange"), Value::string(&b.exchange)),
        (Value::string("queue"), Value::string(&b.queue)),
        (Value::string("key"), Value::string(&key)),
    ];
    let mut args: Vec<(Value, Value)> = Vec::new();
    for item in rest {
        if item == "all" || item == "any" {
            args.push((Value::string("x-match"), Value::string(item)));
        } else if let Some((k, v)) = item.split_once('=') {
            args.push((Value::string(k), Value::string(v)));
        } else {
            return Err(format!(
                "'{item}': expected all, any or key=value after the binding key"
            ));
        }
    }
    if !args.is_empty() {
        attrs.push((Value::string("arguments"), Value::Map(args)));
    }
    let name = format!("{}/{}/{}", b.exchange, b.queue, key);
    call(
        mc,
        Request::new(operation, "binding", Some(&name), Value::Map(attrs)),
    )
    .map(|_| String::new())
}
