//! `tandem-perf throughput`: senders send as fast as window and credit allow,
//! receivers take everything; the report has sent and received rates, every
//! message accounted for (missing, duplicates, out of order) and CPU per
//! message for the harness and the broker.

use crate::load;
use crate::report::RunResult;
use crate::setup::{self, Shape};
use crate::ThroughputArgs;

/// Messages when neither `--messages` nor `--duration` is given.
const DEFAULT_MESSAGES: u64 = 100_000;

pub fn run(args: &ThroughputArgs) -> Result<RunResult, String> {
    let shape = Shape {
        messages: match args.duration {
            Some(_) => None,
            None => Some(args.messages.unwrap_or(DEFAULT_MESSAGES)),
        },
        duration: args.duration,
        rate: None,
        latency: false,
    };
    let (plan, notes) = setup::plan(&args.load, shape)?;
    Ok(load::run(&plan, "throughput", notes)?.result)
}
