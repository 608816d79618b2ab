//! CPU time, turned into microseconds per message.
//!
//! On a shared 2-core machine CPU per message is steadier than messages per
//! second, so every run reports it: for each harness thread (its own clock), for
//! the harness process, and for the broker's processes.
//!
//! - This process and its threads: `clock_gettime` with the process and thread
//!   CPU clocks (nanoseconds; the process clock includes threads that ended).
//! - Another process: the sum of `/proc/PID/task/*/schedstat` (nanoseconds on
//!   CPU per thread), falling back to utime + stime from `/proc/PID/stat` (clock
//!   ticks) when schedstat is not available.
//! - [`listener_pid`] finds the process listening on a local TCP port, so the
//!   broker's CPU can be read without being told its PID.

use std::fs;
use std::time::Duration;

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time the calling thread has used.
pub fn thread_cpu() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time this process has used, all threads (ended ones included).
pub fn process_cpu() -> Duration {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time process `pid` has used, or `None` if it cannot be read (gone, or
/// not ours to read).
pub fn pid_cpu(pid: u32) -> Option<Duration> {
    schedstat_sum(pid).or_else(|| stat_ticks(pid))
}

fn schedstat_sum(pid: u32) -> Option<Duration> {
    let mut total = 0u64;
    let mut any = false;
    for entry in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(text) = fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
        total += ns;
        any = true;
    }
    any.then(|| Duration::from_nanos(total))
}

fn stat_ticks(pid: u32) -> Option<Duration> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its ')' are plain.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos((utime + stime) * 1_000_000_000 / hz))
}

/// Microseconds of `cpu` per message (`None` without messages).
pub fn us_per_message(cpu: Duration, messages: u64) -> Option<f64> {
    (messages > 0).then(|| cpu.as_secs_f64() * 1e6 / messages as f64)
}

/// CPU of several processes sampled together, to take a difference later.
#[derive(Debug, Clone)]
pub struct PidSample {
    pub values: Vec<(u32, Option<Duration>)>,
}

impl PidSample {
    pub fn take(pids: &[u32]) -> PidSample {
        PidSample {
            values: pids.iter().map(|p| (*p, pid_cpu(*p))).collect(),
        }
    }

    /// CPU used since `earlier`, summed over the processes readable both times.
    pub fn since(&self, earlier: &PidSample) -> Option<Duration> {
        let mut total = Duration::ZERO;
        let mut any = false;
        for ((_, now), (_, then)) in self.values.iter().zip(&earlier.values) {
            if let (Some(now), Some(then)) = (now, then) {
                total += now.saturating_sub(*then);
                any = true;
            }
        }
        any.then_some(total)
    }
}

/// The process listening on TCP `port` on this machine, found through
/// `/proc/net/tcp{,6}` (the socket's inode) and `/proc/*/fd` (who holds it).
pub fn listener_pid(port: u16) -> Option<u32> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .find_map(|table| listening_inode(&table, port))?;
    let wanted = format!("socket:[{inode}]");
    for proc_entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// The inode of the listening socket on `port` in a `/proc/net/tcp` table.
fn listening_inode(table: &str, port: u16) -> Option<u64> {
    const LISTEN: &str = "0A";
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let local_port = f.get(1)?.rsplit(':').next()?;
        let matches = u16::from_str_radix(local_port, 16).ok()? == port && *f.get(3)? == LISTEN;
        if matches {
            f.get(9)?.parse().ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_clocks_advance_with_work() {
        let (t0, p0) = (thread_cpu(), process_cpu());
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu() > t0);
        assert!(process_cpu() > p0);
        assert!(pid_cpu(std::process::id()).is_some());
    }

    #[test]
    fn stat_fallback_reads_utime_and_stime() {
        assert!(stat_ticks(std::process::id()).is_some());
    }

    #[test]
    fn listening_socket_is_found_in_the_tcp_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:1628 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n\
           1: 0100007F:1628 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 20 4 30 10 -1\n";
        assert_eq!(listening_inode(table, 5672), Some(4242));
        assert_eq!(listening_inode(table, 5673), None);
    }

    #[test]
    fn the_listener_of_a_port_is_this_process_when_we_listen() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert_eq!(listener_pid(port), Some(std::process::id()));
    }

    #[test]
    fn per_message_figures() {
        assert_eq!(us_per_message(Duration::from_millis(3), 1000), Some(3.0));
        assert_eq!(us_per_message(Duration::from_millis(3), 0), None);
    }
}
