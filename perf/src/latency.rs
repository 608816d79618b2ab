//! `tandem-perf latency`: senders send at a fixed rate (`--rate`, shared among
//! them) for `--duration`; every message carries its send time, and receivers
//! record now minus that in an HdrHistogram. The report gives p50, p90, p99,
//! p99.9 and max; `--hgrm` writes the whole distribution for `plot`.
//!
//! The send time is taken when the message is handed to the engine. When the
//! broker holds senders back (no credit, full window) they fall behind their
//! schedule; the report says by how much at worst, so a latency figure measured
//! while the schedule slipped is not mistaken for a good one.

use crate::hgrm;
use crate::load;
use crate::report::RunResult;
use crate::setup::{self, Shape};
use crate::LatencyArgs;

pub fn run(args: &LatencyArgs) -> Result<RunResult, String> {
    if args.load.receivers == 0 {
        return Err("latency needs at least one receiver".into());
    }
    let shape = Shape {
        messages: None,
        duration: Some(args.duration),
        rate: Some(args.rate),
        latency: true,
    };
    let (plan, notes) = setup::plan(&args.load, shape)?;
    let mut run = load::run(&plan, "latency", notes)?;
    if let Some(path) = &args.hgrm {
        match &run.latency {
            Some(h) => {
                std::fs::write(path, hgrm::render(h))
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                run.result.notes.push(format!(
                    "percentile distribution written to {}",
                    path.display()
                ));
            }
            None => run.result.notes.push(format!(
                "no latency recorded, {} not written",
                path.display()
            )),
        }
    }
    Ok(run.result)
}
