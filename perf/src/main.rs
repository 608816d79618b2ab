//! `tandem-perf`: measures any AMQP 1.0 broker the same way, so Tandem is always
//! measured side by side with its peers.
//!
//! Commands: `throughput`, `latency`, `compare` (a scenario against several
//! brokers, alternating, medians of several rounds), `plot` (latency by
//! percentile from `.hgrm` files, as SVG) and `limit` (what plain loopback TCP
//! moves of the same byte stream). Every command prints text, or one JSON object
//! with `--json`. Exit status: 0 all well; 1 the run lost messages, was refused
//! some, or failed part-way; 2 bad arguments, or the run could not start (no
//! broker, link refused).
//!
//! Map of the crate:
//! - [`load`]: one run: clients on pinned executors ([`executors`]), started
//!   together ([`progress`]), summed up into a [`report::RunResult`].
//! - [`wire`]: one AMQP connection on glommio, driving the project's sans-I/O
//!   engine; [`producer`] and [`consumer`] are what a connection does.
//! - [`message`]: the template and its stamp (run, producer, sequence, send time);
//!   [`sequence`] counts what arrived.
//! - [`null_sink`]: `--null`, in-process peers; [`limit`]: the loopback row;
//!   [`proton_c`]: the real-client row (the Proton-C load client).
//! - [`cpu`]: CPU per message; [`setup`]: arguments to a plan, `--create`.
//! - [`throughput`], [`latency`], [`compare`], [`hgrm`], [`plot`]: the commands.

mod compare;
mod consumer;
mod cpu;
mod executors;
mod hgrm;
mod latency;
mod limit;
mod load;
mod message;
mod null_sink;
mod plot;
mod producer;
mod progress;
mod proton_c;
mod report;
mod sequence;
mod setup;
mod throughput;
mod wire;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tandem_shards::duration::parse_duration;

#[derive(Parser, Debug)]
#[command(
    name = "tandem-perf",
    version,
    about = "AMQP 1.0 load generator and benchmark"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Sends and receives as fast as the broker allows; reports rates, losses
    /// and CPU per message.
    Throughput(ThroughputArgs),
    /// Sends at a fixed rate; reports end-to-end latency percentiles.
    Latency(LatencyArgs),
    /// Runs one scenario against several brokers in turn, several rounds, and
    /// prints a table of medians with ratios to the first broker.
    Compare(compare::CompareArgs),
    /// Draws latency by percentile from .hgrm files as an SVG.
    Plot(PlotArgs),
    /// Pushes the byte stream of a throughput run through plain loopback TCP:
    /// what the machine can move at all.
    Limit(limit::LimitArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Settle {
    /// Senders send settled; nothing is acknowledged.
    PreSettled,
    /// Senders wait for the broker's accepted outcome; receivers accept.
    AtLeastOnce,
}

/// What throughput and latency runs share.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Broker URL: [user[/password]@]host[:port][,host[:port]...] (qpid grammar).
    #[arg(long, default_value = "127.0.0.1:5672")]
    pub url: String,
    /// Node to send to and receive from (RabbitMQ: /amq/queue/NAME).
    #[arg(long, default_value = "tandem-perf")]
    pub address: String,
    /// Sending connections (each its own thread, spread over cores). With 0 the
    /// receivers drain the queue: every message counts, up to --messages.
    #[arg(long, default_value_t = 1)]
    pub senders: u32,
    /// Receiving connections (competing consumers on the address).
    #[arg(long, default_value_t = 1)]
    pub receivers: u32,
    /// Spread the load over this many queues, ADDRESS-0 .. ADDRESS-(N-1): sender
    /// i and receiver i use queue i mod N. 1 uses ADDRESS itself.
    #[arg(long, default_value_t = 1)]
    pub queues: u32,
    /// Body bytes per message (at least 24: the stamp).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Unsettled messages in flight per sender; also each receiver's credit.
    #[arg(long, default_value_t = 1000)]
    pub window: u32,
    #[arg(long, value_enum, default_value_t = Settle::AtLeastOnce)]
    pub settle: Settle,
    /// Mark messages durable (and, with --create, the queue).
    #[arg(long)]
    pub durable: bool,
    /// Declare the queue first (Tandem, via $management; skipped with a note
    /// on other brokers).
    #[arg(long)]
    pub create: bool,
    /// With --create: the queue's replication level for a Tandem HA cluster.
    #[arg(long, requires = "create", value_parser = ["none", "configuration", "all"])]
    pub replicate: Option<String>,
    /// Broker process to measure CPU of (repeatable; default: the process
    /// listening on the URL's port, when it is on this machine).
    #[arg(long = "broker-pid")]
    pub broker_pid: Vec<u32>,
    /// Run against the harness's own in-process peers instead of a broker: what
    /// the harness itself can generate.
    #[arg(long)]
    pub null: bool,
    /// Give up when nothing progresses for this long (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// TLS for ssl: addresses (amqps: URLs): the PEM CA of the broker's certificate.
    #[arg(long = "ssl-trustfile", value_name = "FILE")]
    pub ssl_trustfile: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Messages in all, shared among the senders [default: 100000].
    #[arg(long, conflicts_with = "duration")]
    pub messages: Option<u64>,
    /// Send for this long instead of a number of messages (e.g. 10s).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

#[derive(Args, Debug, Clone)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Messages per second in all, shared among the senders.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Write the full percentile distribution here (HdrHistogram .hgrm text).
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct PlotArgs {
    /// The SVG file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Chart title.
    #[arg(long, default_value = "Latency by percentile")]
    pub title: String,
    /// .hgrm files (from `latency --hgrm`), one line each, named by file stem.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// What a command hands back to be printed.
pub struct Output {
    pub text: String,
    pub json: String,
    /// The exit status.
    pub code: u8,
}

impl Output {
    fn of_run(r: &report::RunResult) -> Output {
        Output {
            text: r.to_text(),
            json: serde_json::to_string_pretty(r).unwrap_or_default(),
            code: match (r.ok, r.started) {
                (true, _) => 0,
                (false, true) => 1,
                (false, false) => 2,
            },
        }
    }
}

fn plot(args: &PlotArgs) -> Result<Output, String> {
    let mut series = Vec::new();
    for path in &args.runs {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let points = hgrm::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let label = path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into(),
        );
        series.push(plot::Series { label, points });
    }
    let svg = plot::render(&args.title, &series);
    std::fs::write(&args.out, svg)
        .map_err(|e| format!("cannot write {}: {e}", args.out.display()))?;
    let labels: Vec<&str> = series.iter().map(|s| s.label.as_str()).collect();
    Ok(Output {
        text: format!(
            "wrote {} ({} series: {})\n",
            args.out.display(),
            series.len(),
            labels.join(", ")
        ),
        json: serde_json::json!({ "out": args.out, "series": labels }).to_string(),
        code: 0,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = match &cli.command {
        Command::Throughput(t) => t.load.json,
        Command::Latency(l) => l.load.json,
        Command::Compare(c) => c.json,
        Command::Plot(p) => p.json,
        Command::Limit(l) => l.json,
    };
    let outcome = match &cli.command {
        Command::Throughput(t) => throughput::run(t).map(|r| Output::of_run(&r)),
        Command::Latency(l) => latency::run(l).map(|r| Output::of_run(&r)),
        Command::Compare(c) => compare::run(c),
        Command::Plot(p) => plot(p),
        Command::Limit(l) => limit::command(l),
    };
    match outcome {
        Ok(out) => {
            if json {
                println!("{}", out.json);
            } else {
                print!("{}", out.text);
            }
            ExitCode::from(out.code)
        }
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({ "ok": false, "error": e }));
            }
            eprintln!("tandem-perf: {e}");
            ExitCode::from(2)
        }
    }
}
