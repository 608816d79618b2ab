//! Quiescence: showing that something does *not* happen by waiting until the
//! processes involved have gone idle, instead of sleeping for a guessed time.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use super::POLL_INTERVAL;

/// CPU time and runnable state of all threads of some processes, from /proc.
#[derive(Clone, Copy, Debug)]
struct Activity {
    cpu_ns: u64,
    runnable: bool,
}

fn activity(pids: &[u32]) -> Option<Activity> {
    let mut total = Activity {
        cpu_ns: 0,
        runnable: false,
    };
    for pid in pids {
        let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        for task in tasks.flatten() {
            let path = task.path();
            // schedstat: nanoseconds on CPU, first field.
            let cpu = fs::read_to_string(path.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            // stat: the state is the first field after the parenthesised name.
            let state = fs::read_to_string(path.join("stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()?
                        .split_whitespace()
                        .next()
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            total.cpu_ns += cpu;
            total.runnable |= state == "R";
        }
    }
    Some(total)
}

/// The CPU all watched processes together may use in a quiet window and still
/// count as idle: timers and heartbeats cost microseconds, real work more.
const IDLE_CPU_BUDGET: Duration = Duration::from_millis(5);

/// The CPU time the processes `pids` use in `window` (e.g. an idle broker's
/// timers, which on a slow machine alone can exceed 5 ms in half a second).
pub fn cpu_used(pids: &[u32], window: Duration) -> Duration {
    let before = activity(pids).map_or(0, |a| a.cpu_ns);
    let end = Instant::now() + window;
    while Instant::now() < end {
        thread::sleep(POLL_INTERVAL); // poll: the loop ends at the window's deadline
    }
    let after = activity(pids).map_or(0, |a| a.cpu_ns);
    Duration::from_nanos(after.saturating_sub(before))
}

/// Waits until the processes `pids` have been idle for `quiet_for`: together
/// they used at most `idle_cpu` plus 5 ms of CPU in that window (`idle_cpu`:
/// what they use in such a window with nothing to do, from [`cpu_used`]) and
/// no thread of theirs was seen
/// runnable twice in a row (a starved process is runnable, not idle). Returns
/// false if that does not happen within `deadline` or a process exits.
///
/// This is how a test shows that something does *not* happen: once the broker
/// and its clients are idle, nothing is in flight that could still change the
/// outcome, so a check made afterwards is final. The wait ends as soon as the
/// condition holds; it never sleeps for a guessed time.
#[must_use]
pub fn wait_until_idle(
    pids: &[u32],
    quiet_for: Duration,
    idle_cpu: Duration,
    deadline: Duration,
) -> bool {
    let budget = idle_cpu + IDLE_CPU_BUDGET;
    let end = Instant::now() + deadline;
    // Start of the current quiet window, and the CPU time then.
    let mut window: Option<(Instant, u64)> = None;
    let mut was_runnable = false;
    loop {
        let Some(now_activity) = activity(pids) else {
            return false;
        };
        let now = Instant::now();
        let busy = now_activity.runnable && was_runnable;
        was_runnable = now_activity.runnable;
        match window {
            Some((start, cpu_at_start))
                if !busy
                    && Duration::from_nanos(now_activity.cpu_ns.saturating_sub(cpu_at_start))
                        <= budget =>
            {
                if now.duration_since(start) >= quiet_for {
                    return true;
                }
            }
            _ => window = Some((now, now_activity.cpu_ns)),
        }
        if now >= end {
            return false;
        }
        thread::sleep(POLL_INTERVAL); // poll: the loop above checks the deadline
    }
}
