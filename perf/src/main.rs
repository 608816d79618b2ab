//! `tandem-perf`: measures any AMQP 1.0 broker the same way.
//!
//! This first version has `throughput` with one sender and one receiver, each on
//! its own connection and thread: the sender keeps `--window` unsettled messages
//! in flight, the receiver settles in ranges; every message carries a sequence
//! number, so loss and duplicates are counted and loss exits non-zero. The full
//! harness (several senders/receivers, latency, compare, CPU per message) is
//! the perf issue's work.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use tandem_shards::amqp::codec::Value;
use tandem_shards::amqp::message::MessageBuilder;
use tandem_shards::amqp::performative::DeliveryState;
use tandem_shards::client::{Client, ClientError, ClientOptions};
use tandem_shards::url::BrokerUrl;

#[derive(Parser)]
#[command(name = "tandem-perf", version, about = "AMQP 1.0 load generator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sends and receives N messages and reports the rate.
    Throughput(Throughput),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Settle {
    PreSettled,
    AtLeastOnce,
}

#[derive(Parser, Clone)]
struct Throughput {
    /// Broker URL (host:port, qpid URL grammar).
    #[arg(long, default_value = "127.0.0.1:5672")]
    url: String,
    /// Node to send to and receive from (RabbitMQ: /amq/queue/NAME).
    #[arg(long, default_value = "tandem-perf")]
    address: String,
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Body size in bytes (at least 8: the sequence number).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Unsettled messages in flight per sender; also the receiver's credit.
    #[arg(long, default_value_t = 1000)]
    window: u32,
    #[arg(long, value_enum, default_value_t = Settle::AtLeastOnce)]
    settle: Settle,
    /// Give up when nothing arrives for this many seconds.
    #[arg(long, default_value_t = 10)]
    idle_timeout: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

struct SendReport {
    sent: u64,
    accepted: u64,
    rejected: u64,
}

struct RecvReport {
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    missing: u64,
    finished: Instant,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Throughput(t) => match throughput(&t) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("tandem-perf: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn throughput(t: &Throughput) -> Result<bool, String> {
    if t.size < 8 {
        return Err(format!(
            "--size {}: must be at least 8 (the sequence number)",
            t.size
        ));
    }
    let url: BrokerUrl = t.url.parse().map_err(|e| format!("--url: {e}"))?;
    let receiver = {
        let (url, t) = (url.clone(), t.clone());
        let mut client =
            Client::connect(&url, &ClientOptions::default()).map_err(|e| e.to_string())?;
        let link = client
            .receiver(&t.address, t.window)
            .map_err(|e| e.to_string())?;
        std::thread::spawn(move || receive(&mut client, link, &t))
    };
    let start = Instant::now();
    let sent = send(&url, t).map_err(|e| format!("sender: {e}"))?;
    let recv = receiver
        .join()
        .map_err(|_| "receiver thread panicked".to_string())?
        .map_err(|e| format!("receiver: {e}"))?;
    let secs = recv.finished.duration_since(start).as_secs_f64().max(1e-9);
    let rate = recv.received as f64 / secs;
    let mbps = rate * t.size as f64 / 1e6;
    let ok = recv.missing == 0 && sent.rejected == 0;
    if t.json {
        println!(
            "{{\"messages\":{},\"size\":{},\"window\":{},\"sent\":{},\"accepted\":{},\"rejected\":{},\"received\":{},\"missing\":{},\"duplicates\":{},\"out_of_order\":{},\"seconds\":{:.3},\"msg_per_s\":{:.0},\"mb_per_s\":{:.1}}}",
            t.messages, t.size, t.window, sent.sent, sent.accepted, sent.rejected, recv.received, recv.missing, recv.duplicates, recv.out_of_order, secs, rate, mbps
        );
    } else {
        println!(
            "sent {} (accepted {}, rejected {}), received {} in {:.3}s: {:.0} msg/s, {:.1} MB/s; missing {}, duplicates {}, out of order {}",
            sent.sent, sent.accepted, sent.rejected, recv.received, secs, rate, mbps, recv.missing, recv.duplicates, recv.out_of_order
        );
    }
    Ok(ok)
}

/// A message whose data section ends with `size` bytes, the first 8 the sequence.
fn template(size: usize) -> Vec<u8> {
    MessageBuilder {
        body: Some(Value::Binary(vec![0u8; size].into())),
        ..Default::default()
    }
    .encode()
    .to_vec()
}

fn send(url: &BrokerUrl, t: &Throughput) -> Result<SendReport, ClientError> {
    let mut client = Client::connect(url, &ClientOptions::default())?;
    let link = client.sender(&t.address)?;
    let presettled = t.settle == Settle::PreSettled;
    let mut message = template(t.size);
    let seq_at = message.len() - t.size;
    let mut report = SendReport {
        sent: 0,
        accepted: 0,
        rejected: 0,
    };
    let mut in_flight: u64 = 0;
    let idle = Duration::from_secs(t.idle_timeout);
    let mut last_progress = Instant::now();
    while report.sent < t.messages || in_flight > 0 {
        while report.sent < t.messages && (presettled || in_flight < u64::from(t.window)) {
            message[seq_at..seq_at + 8].copy_from_slice(&report.sent.to_be_bytes());
            let tag = report.sent.to_be_bytes();
            if client.try_send(link, &tag, &message, presettled).is_none() {
                break;
            }
            report.sent += 1;
            if !presettled {
                in_flight += 1;
            }
        }
        client.poll(Duration::from_millis(100))?;
        let outcomes = client.take_outcomes();
        if !outcomes.is_empty() {
            last_progress = Instant::now();
        }
        for (_, state) in outcomes {
            in_flight = in_flight.saturating_sub(1);
            match state {
                DeliveryState::Accepted => report.accepted += 1,
                _ => report.rejected += 1,
            }
        }
        if last_progress.elapsed() > idle {
            return Err(ClientError::Timeout(idle, "settlements"));
        }
    }
    client.flush()?;
    let _ = client.close();
    Ok(report)
}

fn receive(
    client: &mut Client,
    link: tandem_shards::amqp::connection::LinkKey,
    t: &Throughput,
) -> Result<RecvReport, ClientError> {
    let mut seen = vec![false; t.messages as usize];
    let mut report = RecvReport {
        received: 0,
        duplicates: 0,
        out_of_order: 0,
        missing: 0,
        finished: Instant::now(),
    };
    let mut next_expected = 0u64;
    let idle = Duration::from_secs(t.idle_timeout);
    let mut last = Instant::now();
    let mut unique = 0u64;
    while unique < t.messages {
        client.poll(Duration::from_millis(100))?;
        let batch = client.take_received();
        if batch.is_empty() {
            if last.elapsed() > idle {
                break;
            }
            continue;
        }
        last = Instant::now();
        let mut first_unsettled: Option<u32> = None;
        let mut last_unsettled = 0;
        for m in &batch {
            report.received += 1;
            let p = &m.payload;
            // The sequence number opens the last `size` bytes (the body).
            let seq = match p.len().checked_sub(t.size) {
                Some(at) => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&p[at..at + 8]);
                    u64::from_be_bytes(b)
                }
                None => u64::MAX,
            };
            match seen.get_mut(seq as usize) {
                Some(s) if *s => report.duplicates += 1,
                Some(s) => {
                    *s = true;
                    unique += 1;
                    if seq != next_expected {
                        report.out_of_order += 1;
                    }
                    next_expected = seq + 1;
                }
                None => report.duplicates += 1,
            }
            if !m.settled {
                first_unsettled.get_or_insert(m.delivery_id);
                last_unsettled = m.delivery_id;
            }
        }
        if let Some(first) = first_unsettled {
            client.settle_range(first, last_unsettled, DeliveryState::Accepted)?;
        }
        client.flow(link, t.window)?;
    }
    report.finished = Instant::now();
    report.missing = t.messages - unique;
    Ok(report)
}
