//! `tandem-ha`: the HA admin tool, in the manner of `qpid-ha`. It always connects
//! as an admin (`qpid.ha-admin`), so it works against backups too.
//!
//! `promote` is for the cluster resource manager only: it is refused, and hidden
//! from `--help`, unless `--cluster-manager` is given.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tandem::tools::{self, cell, get, ToolResult};
use tandem_ha::status::{BrokerStatus, Expectation};
use tandem_shards::amqp::codec::Value;
use tandem_shards::management::{status, Request};

#[derive(Parser)]
#[command(
    name = "tandem-ha",
    version,
    about = "Tandem HA administration: status, promotion, membership, queue replicas"
)]
struct Cli {
    /// Broker URL: [user[/password]@]host[:port]; with user@ and no password, the
    /// password comes from $TANDEM_PASSWORD
    #[arg(
        short = 'b',
        long = "broker",
        value_name = "URL",
        default_value = "localhost:5672",
        global = true
    )]
    broker: String,
    /// Seconds to wait for the broker (and for `ready --wait`).
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS", global = true)]
    timeout: f64,
    /// Allow the commands reserved to the cluster resource manager.
    #[arg(long = "cluster-manager", global = true)]
    cluster_manager: bool,
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    tls: tools::TlsArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Check that the broker answers (exit 0) or not (exit 1).
    Ping,
    /// Print the broker's HA status.
    Status {
        /// Exit 0 only if the status is this (standalone, joining, catchup, ready,
        /// recovering, active; or primary = recovering|active, backup = joining|catchup|ready).
        #[arg(long, value_name = "STATE")]
        expect: Option<String>,
        /// Exit 0 only if the broker is a primary (recovering or active).
        #[arg(long)]
        is_primary: bool,
        /// Every broker in the cluster's ha-brokers-url.
        #[arg(long)]
        all: bool,
    },
    /// Print the broker's HA settings and membership.
    Query {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if the broker is ready to serve (a ready backup, or an active primary).
    Ready {
        /// Wait (up to --timeout) until it is.
        #[arg(long)]
        wait: bool,
    },
    /// Print what the broker's store holds: its epoch and, per durable queue,
    /// the last position; with --all, every broker's, and which is newest
    /// (highest epoch, then the most positions), for after a total failure.
    StoreStatus {
        #[arg(long)]
        all: bool,
        /// Exit 0 only if this joining broker may be promoted after a total
        /// failure: no broker of ha-brokers-url has a newer store, and every
        /// one answered (what promote checks; resource-manager scripts use it
        /// to prefer the newest broker).
        #[arg(long, conflicts_with = "all")]
        newest: bool,
    },
    /// Replicate a queue from another broker (not one of this cluster) into
    /// the existing queue of that name here: `replicate QUEUE REMOTE` or
    /// `replicate REMOTE QUEUE` (REMOTE: [user[/password]@]host:port, or a
    /// list of a cluster's addresses). Waits up to --timeout for the first
    /// attempt; if it fails, the queue is left as it was.
    Replicate {
        #[arg(value_name = "QUEUE|REMOTE")]
        first: String,
        #[arg(value_name = "REMOTE|QUEUE")]
        second: String,
    },
    /// Stop replicating a queue: it becomes an ordinary local queue.
    StopReplicate { queue: String },
    /// Promote this broker to primary (cluster manager only). A joining broker
    /// with a store (after a total failure) is promoted only if no peer has a
    /// newer store and every peer answered, unless --force.
    #[command(hide = true)]
    Promote {
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cluster_manager = std::env::args().any(|a| a == "--cluster-manager");
    let mut command = Cli::command();
    if cluster_manager {
        command = command.mut_subcommand("promote", |s| s.hide(false));
    }
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(&cli) {
        Ok(code) => code,
        Err(e) => tools::fail("tandem-ha", &e),
    }
}

fn run(cli: &Cli) -> ToolResult<ExitCode> {
    tools::use_tls(&cli.tls)?;
    match &cli.command {
        Command::Ping => {
            let mut mc = tools::connect(&cli.broker, true, cli.timeout)?;
            tools::read(&mut mc, "broker", None)?;
            mc.close();
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            expect,
            is_primary,
            all,
        } => {
            let expectation = match (expect, is_primary) {
                (Some(e), _) => Some(
                    e.parse::<Expectation>()
                        .map_err(|e| format!("--expect: {e}"))?,
                ),
                (None, true) => Some(Expectation::Primary),
                (None, false) => None,
            };
            let brokers = if *all {
                cluster_brokers(cli)?
            } else {
                vec![cli.broker.clone()]
            };
            let mut ok = true;
            for url in &brokers {
                let read = ha_read(url, cli.timeout);
                let status = read.as_ref().map(|r| r.0).map_err(Clone::clone);
                let withholding = read.as_ref().ok().and_then(|r| r.1.clone());
                let shown = match &status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("unreachable ({e})"),
                };
                // Scripts read the status word; why settlements wait goes
                // beside it (--all) or to stderr.
                if *all {
                    match &withholding {
                        Some(why) => println!("{} {shown} ({why})", without_credentials(url)),
                        None => println!("{} {shown}", without_credentials(url)),
                    }
                } else if status.is_ok() {
                    println!("{shown}");
                    if let Some(why) = &withholding {
                        eprintln!("tandem-ha: {why}");
                    }
                }
                ok &= match (&status, expectation) {
                    (Ok(s), Some(e)) => e.matches(*s),
                    (Ok(_), None) => true,
                    (Err(e), _) => {
                        if !*all {
                            return Err(e.clone());
                        }
                        false
                    }
                };
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Query { all, json } => {
            let brokers = if *all {
                cluster_brokers(cli)?
            } else {
                vec![cli.broker.clone()]
            };
            for url in &brokers {
                let mut mc = tools::connect(url, true, cli.timeout)?;
                let attrs = tools::read(&mut mc, "ha-broker", None)?;
                mc.close();
                if *json {
                    println!("{}", tools::json_rows(&[attrs]));
                    continue;
                }
                if *all {
                    println!("{}:", without_credentials(url));
                }
                for key in [
                    "status",
                    "broker-id",
                    "epoch",
                    "cluster-id",
                    "brokers-url",
                    "public-url",
                    "replicate",
                    "min-backups",
                    "ready-backups",
                ] {
                    println!("{:<12} {}", format!("{key}:"), cell(get(&attrs, key)));
                }
                if let Some(Value::String(why)) = get(&attrs, "withholding") {
                    println!("withholding: {why}");
                }
                if let Some(Value::List(members)) = get(&attrs, "members") {
                    for m in members {
                        // What catch-up sent it (and what it already held),
                        // after the fields scripts read.
                        let sent = match m.map_get("catch-up-messages") {
                            Some(n) => format!(
                                " catch-up {} msgs {} bytes kept {}",
                                cell(Some(n)),
                                cell(m.map_get("catch-up-bytes")),
                                cell(m.map_get("catch-up-kept"))
                            ),
                            None => String::new(),
                        };
                        println!(
                            "member:      {} {} {}{sent}",
                            cell(m.map_get("address")),
                            cell(m.map_get("status")),
                            cell(m.map_get("broker-id"))
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::StoreStatus { newest: true, .. } => match refuse_a_stale_store(cli) {
            Ok(()) => {
                println!("newest");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                println!("not newest: {e}");
                Ok(ExitCode::from(1))
            }
        },
        Command::StoreStatus { all, .. } => {
            let brokers = if *all {
                cluster_brokers(cli)?
            } else {
                vec![cli.broker.clone()]
            };
            let mut newest: Option<(u64, u64, String)> = None;
            let mut silent = Vec::new();
            for url in &brokers {
                let shown = without_credentials(url).to_owned();
                match store_status(url, cli.timeout) {
                    Ok((epoch, positions)) => {
                        let total: u64 = positions.iter().map(|(_, p)| p).sum();
                        let list: Vec<String> = positions
                            .iter()
                            .map(|(q, p)| format!("{q}={}", tandem_ha::position_text(*p)))
                            .collect();
                        println!("{shown} epoch {epoch} positions {}", list.join(","));
                        if newest
                            .as_ref()
                            .is_none_or(|(e, t, _)| (epoch, total) > (*e, *t))
                        {
                            newest = Some((epoch, total, shown));
                        }
                    }
                    Err(e) => {
                        println!("{shown} no answer ({e})");
                        silent.push(shown);
                    }
                }
            }
            if *all {
                if let Some((_, _, url)) = &newest {
                    println!("newest: {url}");
                }
                if !silent.is_empty() {
                    eprintln!(
                        "tandem-ha: {} did not answer; the newest store may be there",
                        silent.join(", ")
                    );
                    return Ok(ExitCode::from(1));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ready { wait } => {
            let deadline = Instant::now() + Duration::from_secs_f64(cli.timeout.max(0.0));
            loop {
                let status = ha_status(&cli.broker, cli.timeout);
                if let Ok(s) = &status {
                    if matches!(s, BrokerStatus::Ready | BrokerStatus::Active) {
                        println!("{s}");
                        return Ok(ExitCode::SUCCESS);
                    }
                }
                if !*wait || Instant::now() >= deadline {
                    match status {
                        Ok(s) => println!("{s}"),
                        Err(e) => return Err(e),
                    }
                    return Ok(ExitCode::from(1));
                }
                // Poll the broker again; the loop ends at the deadline above.
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Command::Replicate { first, second } => {
            let (queue, remote) = tools::replica::queue_and_remote(first, second)?;
            let mut mc = tools::connect(&cli.broker, true, cli.timeout)?;
            let timeout = Duration::from_secs_f64(cli.timeout.max(0.0));
            let out = tools::replica::replicate(&mut mc, queue, remote, timeout);
            mc.close();
            print!("{}", out?);
            Ok(ExitCode::SUCCESS)
        }
        Command::StopReplicate { queue } => {
            let mut mc = tools::connect(&cli.broker, true, cli.timeout)?;
            let out = tools::replica::stop_replicate(&mut mc, queue);
            mc.close();
            print!("{}", out?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Promote { force } => {
            if !cli.cluster_manager {
                return Err(
                    "promote should only be called by the cluster manager (--cluster-manager)"
                        .into(),
                );
            }
            if !*force {
                refuse_a_stale_store(cli)?;
            }
            let mut mc = tools::connect(&cli.broker, true, cli.timeout)?;
            let body = Value::Map(vec![(Value::string("cluster-manager"), Value::Bool(true))]);
            let request = Request::new("PROMOTE", "ha-broker", None, body);
            let deadline = Instant::now() + Duration::from_secs_f64(cli.timeout.max(0.0));
            // A joining broker answers 503 until it has heard from every peer.
            let resp = loop {
                let resp = mc.call(&request).map_err(|e| e.to_string())?;
                if resp.status != status::SERVICE_UNAVAILABLE || Instant::now() >= deadline {
                    break resp;
                }
                // Ask again; the loop ends at the deadline above.
                std::thread::sleep(Duration::from_millis(50));
            };
            mc.close();
            if !resp.is_success() {
                return Err(format!("{} (status {})", resp.description, resp.status));
            }
            println!("{}", cell(resp.body.map_get("status")));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A broker URL as printed: the address only, never the credentials.
fn without_credentials(url: &str) -> &str {
    url.rsplit_once('@').map_or(url, |(_, address)| address)
}

/// The broker's HA status.
fn ha_status(url: &str, timeout: f64) -> Result<BrokerStatus, String> {
    ha_read(url, timeout).map(|(status, _)| status)
}

/// The broker's HA status, and why it withholds settlements if it does
/// (`ha-min-backups`).
fn ha_read(url: &str, timeout: f64) -> Result<(BrokerStatus, Option<String>), String> {
    let mut mc = tools::connect(url, true, timeout)?;
    let attrs = tools::read(&mut mc, "ha-broker", None);
    mc.close();
    let attrs = match attrs {
        Ok(a) => a,
        // A broker outside a cluster has no ha-broker entity.
        Err(e) if e.contains("status 404") => return Ok((BrokerStatus::Standalone, None)),
        Err(e) => return Err(e),
    };
    let text = cell(get(&attrs, "status"));
    let status = text.parse().map_err(|e| format!("{e}"))?;
    let withholding = match get(&attrs, "withholding") {
        Some(Value::String(why)) => Some(why.clone()),
        _ => None,
    };
    Ok((status, withholding))
}

/// After a total failure every broker restarts joining with its store: the
/// one promoted must hold the newest (highest epoch, then most positions), and
/// a peer that does not answer may hold a newer one. A ready backup (an
/// ordinary fail-over) and a broker with nothing stored are not checked.
fn refuse_a_stale_store(cli: &Cli) -> ToolResult<()> {
    if ha_status(&cli.broker, cli.timeout)? != BrokerStatus::Joining {
        return Ok(());
    }
    let (epoch, positions) = store_status(&cli.broker, cli.timeout)?;
    let total: u64 = positions.iter().map(|(_, p)| p).sum();
    if epoch == 0 && total == 0 {
        return Ok(());
    }
    let me = without_credentials(&cli.broker).to_owned();
    for url in cluster_brokers(cli)? {
        let shown = without_credentials(&url).to_owned();
        if shown == me {
            continue;
        }
        match store_status(&url, cli.timeout) {
            Err(e) => {
                return Err(format!(
                    "{shown} did not answer ({e}); its store may be newer than this one's: promote anyway with --force"
                ))
            }
            Ok((e, p)) => {
                let theirs: u64 = p.iter().map(|(_, n)| n).sum();
                if (e, theirs) > (epoch, total) {
                    let list = |ps: &[(String, u64)]| {
                        ps.iter()
                            .map(|(q, p)| format!("{q}={}", tandem_ha::position_text(*p)))
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    return Err(format!(
                        "{shown} has a newer store (epoch {e}, positions {}) than this broker (epoch {epoch}, positions {}): promote {shown}, or this one with --force",
                        list(&p),
                        list(&positions)
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A broker's epoch and, per durable queue, the last position it stored.
fn store_status(url: &str, timeout: f64) -> Result<(u64, Vec<(String, u64)>), String> {
    let mut mc = tools::connect(url, true, timeout)?;
    let attrs = tools::read(&mut mc, "ha-broker", None);
    let queues = tools::query(&mut mc, "queue");
    mc.close();
    let epoch = match attrs {
        Ok(a) => get(&a, "epoch").and_then(Value::as_u64).unwrap_or(0),
        Err(e) if e.contains("status 404") => 0,
        Err(e) => return Err(e),
    };
    let mut positions: Vec<(String, u64)> = queues?
        .iter()
        .filter(|q| matches!(get(q, "durable"), Some(Value::Bool(true))))
        .map(|q| {
            let name = cell(get(q, "name"));
            let last = get(q, "last-position").and_then(Value::as_u64).unwrap_or(0);
            (name, last)
        })
        .collect();
    positions.sort();
    Ok((epoch, positions))
}

/// Every broker of the cluster, from the queried broker's ha-brokers-url.
fn cluster_brokers(cli: &Cli) -> ToolResult<Vec<String>> {
    let mut mc = tools::connect(&cli.broker, true, cli.timeout)?;
    let attrs = tools::read(&mut mc, "ha-broker", None)?;
    mc.close();
    let url = cell(get(&attrs, "brokers-url"));
    // Each broker gets the credentials given with -b.
    let given: tandem_shards::url::BrokerUrl =
        cli.broker.parse().map_err(|e| format!("--broker: {e}"))?;
    let creds = match (&given.user, &given.password) {
        (Some(u), Some(p)) => format!("{u}/{p}@"),
        (Some(u), None) => format!("{u}@"),
        _ => String::new(),
    };
    let list: Vec<String> = url
        .split(',')
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
        .map(|a| format!("{creds}{a}"))
        .collect();
    if list.is_empty() {
        return Err("the broker reports no ha-brokers-url".into());
    }
    Ok(list)
}
