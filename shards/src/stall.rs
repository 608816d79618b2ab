//! The stall detector: how much CPU each poll of a shard's tasks takes.
//!
//! A shard is one thread running many tasks; a task that computes for long
//! in one poll delays every other connection of the shard. Wall time would
//! also count the time the kernel gave the core to someone else (on a shared
//! 2-core machine, often), so each poll is measured with the thread's own CPU
//! clock. A poll over `stall-threshold` is a stall: the shard logs it with the
//! task that took it, counts it, and keeps the longest poll it has seen, for
//! management (`executor-stalls`, `longest-poll-us`, `longest-poll-at` on the
//! broker) and so for `tandem-perf compare`.
//!
//! Reading the thread CPU clock is a system call (about 0.3–1 µs on the
//! project's VM), two per poll, so the detector is off unless a threshold is
//! set; the perf scripts set 500 µs.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

/// After this many stall log lines, a shard logs only every `LOG_EVERY`th.
const LOG_FIRST: u64 = 20;
const LOG_EVERY: u64 = 1000;

/// What one shard (or the whole broker, summed) has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StallFigures {
    /// Polls over the threshold.
    pub stalls: u64,
    /// The longest poll seen, in µs of CPU (0: none measured).
    pub longest_us: u64,
    /// Which task took it, e.g. `shard 1 connection 7 (127.0.0.1:40112)`.
    pub longest_at: String,
}

impl StallFigures {
    /// Adds another shard's figures: stalls sum, the longest poll wins.
    pub fn merge(&mut self, other: &StallFigures) {
        self.stalls += other.stalls;
        if other.longest_us > self.longest_us {
            self.longest_us = other.longest_us;
            self.longest_at = other.longest_at.clone();
        }
    }
}

/// One shard's detector.
#[derive(Debug)]
pub struct StallWatch {
    shard: usize,
    /// `None`: off.
    threshold: Option<Duration>,
    stalls: Cell<u64>,
    longest: RefCell<(Duration, String)>,
}

impl StallWatch {
    pub fn new(shard: usize, threshold: Option<Duration>) -> Rc<StallWatch> {
        Rc::new(StallWatch {
            shard,
            threshold: threshold.filter(|t| !t.is_zero()),
            stalls: Cell::new(0),
            longest: RefCell::new((Duration::ZERO, String::new())),
        })
    }

    pub fn enabled(&self) -> bool {
        self.threshold.is_some()
    }

    /// A task's name for [`watched`], made only when the detector is on (an
    /// unwatched task costs no label).
    pub fn label(&self, name: impl FnOnce() -> String) -> String {
        if self.enabled() {
            name()
        } else {
            String::new()
        }
    }

    /// Notes one poll of task `what` that used `cpu`.
    pub fn record(&self, what: &str, cpu: Duration) {
        let Some(threshold) = self.threshold else {
            return;
        };
        let longest = {
            let mut longest = self.longest.borrow_mut();
            let beaten = cpu > longest.0;
            if beaten {
                *longest = (cpu, format!("shard {} {what}", self.shard));
            }
            beaten
        };
        if cpu <= threshold {
            return;
        }
        let n = self.stalls.get() + 1;
        self.stalls.set(n);
        // The longest poll so far is always logged, so that the one
        // management reports can be found in the log with its time.
        if n <= LOG_FIRST || n.is_multiple_of(LOG_EVERY) || longest {
            tracing::warn!(
                shard = self.shard,
                task = what,
                cpu_us = cpu.as_micros() as u64,
                stalls = n,
                "executor stall: one poll used {} µs of CPU (stall-threshold {} µs)",
                cpu.as_micros(),
                threshold.as_micros()
            );
        }
    }

    pub fn figures(&self) -> StallFigures {
        let longest = self.longest.borrow();
        StallFigures {
            stalls: self.stalls.get(),
            longest_us: longest.0.as_micros() as u64,
            longest_at: longest.1.clone(),
        }
    }
}

/// CPU time the calling thread has used.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// `fut`, with the CPU of each of its polls recorded as task `what` (see
/// [`StallWatch::label`]).
pub fn watched<F: Future>(
    watch: Rc<StallWatch>,
    what: String,
    fut: F,
) -> impl Future<Output = F::Output> {
    let mut fut = Box::pin(fut);
    std::future::poll_fn(move |cx| {
        if !watch.enabled() {
            return fut.as_mut().poll(cx);
        }
        let start = thread_cpu();
        let out = fut.as_mut().poll(cx);
        watch.record(&what, thread_cpu().saturating_sub(start));
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_over_the_threshold_count_and_the_longest_is_kept_with_its_task() {
        let watch = StallWatch::new(3, Some(Duration::from_micros(500)));
        watch.record("connection 1", Duration::from_micros(200));
        assert_eq!(watch.figures().stalls, 0);
        watch.record("connection 2", Duration::from_micros(900));
        watch.record("ring from 0", Duration::from_micros(600));
        let f = watch.figures();
        assert_eq!(f.stalls, 2);
        assert_eq!(f.longest_us, 900);
        assert_eq!(f.longest_at, "shard 3 connection 2");

        let mut all = StallFigures::default();
        all.merge(&f);
        all.merge(&StallFigures {
            stalls: 1,
            longest_us: 700,
            longest_at: "shard 0 accept".into(),
        });
        assert_eq!((all.stalls, all.longest_us), (3, 900));
        assert_eq!(all.longest_at, "shard 3 connection 2");
    }

    #[test]
    fn off_without_a_threshold_and_a_busy_poll_is_measured_in_cpu() {
        let off = StallWatch::new(0, None);
        off.record("x", Duration::from_secs(1));
        assert_eq!(off.figures(), StallFigures::default());
        assert!(StallWatch::new(0, Some(Duration::ZERO)).threshold.is_none());

        // A poll that computes for a while: its CPU is seen, and a threshold
        // of 1 µs calls it a stall.
        let watch = StallWatch::new(0, Some(Duration::from_micros(1)));
        let busy = watched(watch.clone(), watch.label(|| "busy".into()), async {
            let start = thread_cpu();
            let mut x = 0u64;
            while thread_cpu().saturating_sub(start) < Duration::from_millis(2) {
                x = x.wrapping_add(1);
            }
            x
        });
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut busy = Box::pin(busy);
        assert!(busy.as_mut().poll(&mut cx).is_ready());
        let f = watch.figures();
        assert_eq!(f.stalls, 1);
        assert!(f.longest_us >= 2000, "{f:?}");
        assert_eq!(f.longest_at, "shard 0 busy");
    }
}
