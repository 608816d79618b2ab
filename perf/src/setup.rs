//! Turning command-line arguments into a [`LoadPlan`]: parse the URL, declare
//! the queue when asked (`--create`, through Tandem's `$management` node), and
//! find the broker's process for its CPU figure.

use std::time::Duration;

use tandem_shards::amqp::codec::Value;
use tandem_shards::client::{Client, ClientOptions};
use tandem_shards::management::{map, ManagementClient, Request};
use tandem_shards::url::BrokerUrl;

use crate::cpu;
use crate::load::{queue_name, LoadPlan};
use crate::message::STAMP_LEN;
use crate::LoadArgs;

/// How long the management exchange of `--create` may take.
const MANAGEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the run adds to the common arguments.
pub struct Shape {
    pub messages: Option<u64>,
    pub duration: Option<Duration>,
    pub rate: Option<f64>,
    pub latency: bool,
}

/// The plan for `args` and `shape`, with notes for the report. Declares the
/// queue first with `--create`.
pub fn plan(args: &LoadArgs, shape: Shape) -> Result<(LoadPlan, Vec<String>), String> {
    if let Some(ca) = &args.ssl_trustfile {
        crate::wire::use_tls(ca)?;
    }
    if args.size < STAMP_LEN {
        return Err(format!(
            "--size {}: must be at least {STAMP_LEN} (the stamp: run, producer, sequence, send time)",
            args.size
        ));
    }
    if args.senders == 0 && args.receivers == 0 {
        return Err("--senders 0 --receivers 0: nothing to run".into());
    }
    if shape.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err("--rate: must be a positive number of messages per second".into());
    }
    let url: BrokerUrl = args.url.parse().map_err(|e| format!("--url: {e}"))?;
    let mut notes = Vec::new();
    if args.senders == 0 && shape.messages.is_none() && !args.null {
        return Err("--senders 0 drains the queue: give --messages, how many to receive".into());
    }
    if args.queues == 0 {
        return Err("--queues 0: at least one queue is needed".into());
    }
    if args.queues > 1 && args.queues > args.senders.max(1).min(args.receivers.max(1)) {
        return Err(format!(
            "--queues {}: more queues than senders ({}) or receivers ({}); every queue needs both",
            args.queues, args.senders, args.receivers
        ));
    }
    if args.create && !args.null {
        for q in 0..args.queues {
            notes.push(declare_queue(
                &url,
                &queue_name(&args.address, args.queues, q),
                args.durable,
                args.replicate.as_deref(),
            )?);
        }
    }
    let mut broker_pids = args.broker_pid.clone();
    if broker_pids.is_empty() && !args.null {
        if let Some(pid) = local_listener(&url) {
            notes.push(format!(
                "broker CPU from pid {pid}, found listening on {} (give --broker-pid to choose)",
                url.addrs[0].socket_string()
            ));
            broker_pids.push(pid);
        }
    }
    let plan = LoadPlan {
        url,
        address: args.address.clone(),
        queues: args.queues,
        senders: args.senders,
        receivers: args.receivers,
        messages: shape.messages,
        duration: shape.duration,
        size: args.size,
        window: args.window.max(1),
        presettled: args.settle == crate::Settle::PreSettled,
        durable: args.durable,
        rate: shape.rate,
        latency: shape.latency,
        null: args.null,
        idle_timeout: args.idle_timeout,
        broker_pids,
    };
    Ok((plan, notes))
}

/// The process listening on the URL's first address, when that is this machine.
fn local_listener(url: &BrokerUrl) -> Option<u32> {
    let addr = url.addrs.first()?;
    let local = matches!(addr.host.as_str(), "localhost" | "::1" | "0.0.0.0")
        || addr.host.starts_with("127.");
    if !local {
        return None;
    }
    cpu::listener_pid(addr.port).filter(|pid| *pid != std::process::id())
}

/// A management session with the broker at `url`, or the name of the product
/// when it is not Tandem (whose management this harness does not speak).
fn tandem_management(
    url: &BrokerUrl,
    purpose: &str,
) -> Result<Result<ManagementClient, String>, String> {
    let opts = ClientOptions {
        timeout: Some(MANAGEMENT_TIMEOUT),
        container_id: Some(format!("tandem-perf-{purpose}-{}", std::process::id())),
        tls: crate::wire::tls(),
        ..Default::default()
    };
    let client = Client::connect(url, &opts).map_err(|e| format!("--{purpose}: {e}"))?;
    let product = client
        .remote_properties
        .as_ref()
        .and_then(|p| p.map_get("product"))
        .and_then(Value::as_str)
        .unwrap_or("an unnamed broker")
        .to_owned();
    if product != "tandem" {
        let _ = client.close();
        return Ok(Err(product));
    }
    ManagementClient::new(client, MANAGEMENT_TIMEOUT)
        .map(Ok)
        .map_err(|e| format!("--{purpose}: cannot reach $management: {e}"))
}

/// What a Tandem broker's stall detector has counted (`stall-threshold`):
/// `None` from another broker, or with the detector off.
pub fn broker_stalls(url: &BrokerUrl) -> Option<crate::report::StallReading> {
    let mut mgmt = tandem_management(url, "stalls").ok()?.ok()?;
    let reply = mgmt.call(&Request::new(
        "READ",
        "broker",
        None,
        Value::Map(Vec::new()),
    ));
    mgmt.close();
    let body = reply.ok()?.body;
    let get = |k: &str| body.map_get(k);
    let longest_us = get("longest-poll-us")?.as_u64()?;
    // Nothing measured at all: the detector is off.
    (longest_us > 0).then(|| crate::report::StallReading {
        stalls: get("executor-stalls").and_then(Value::as_u64).unwrap_or(0),
        longest_us,
        longest_at: get("longest-poll-at")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
    })
}

/// Declares queue `name` on a Tandem broker; on another broker, says that it
/// skipped (their AMQP 1.0 plugins cannot declare queues: use their own tools).
fn declare_queue(
    url: &BrokerUrl,
    name: &str,
    durable: bool,
    replicate: Option<&str>,
) -> Result<String, String> {
    let mut mgmt = match tandem_management(url, "create")? {
        Ok(m) => m,
        Err(product) => {
            return Ok(format!(
                "--create skipped: {} is {product}, not Tandem; declare '{name}' with that broker's own tools",
                url.redacted()
            ))
        }
    };
    let mut attributes = vec![("durable", Value::Bool(durable))];
    if let Some(r) = replicate {
        attributes.push(("replicate", Value::string(r)));
    }
    let reply = mgmt
        .call(&Request::new(
            "CREATE",
            "queue",
            Some(name),
            map(attributes),
        ))
        .map_err(|e| format!("--create: {e}"));
    mgmt.close();
    let reply = reply?;
    if !reply.is_success() {
        return Err(format!(
            "--create: creating queue '{name}' failed: {} {}",
            reply.status, reply.description
        ));
    }
    Ok(format!(
        "queue '{name}' declared (durable {durable}, replicate {})",
        replicate.unwrap_or("default")
    ))
}
