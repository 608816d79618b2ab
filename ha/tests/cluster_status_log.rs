//! The HA role logs every status change: checked on the simulated cluster
//! with a log subscriber. A test binary of its own: tracing caches whether a
//! log line is wanted per call site, across threads, so a subscriber set for
//! one test thread misses lines while other tests run without one.

mod cluster;

use cluster::running_cluster;

const SEED: u64 = 1;

#[test]
fn every_status_change_is_reported() {
    use std::sync::{Arc, Mutex};
    let log = Arc::new(Mutex::new(Vec::<u8>::new()));
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || LogWriter(writer.clone()))
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        running_cluster(1, SEED);
    });
    let text = String::from_utf8_lossy(&log.lock().unwrap_or_else(|e| e.into_inner())).to_string();
    let count = |s: &str| text.matches(s).count();
    // 0: joining -> recovering -> active; 1 and 2: joining -> catchup -> ready.
    assert_eq!(
        count("status changed from joining to recovering"),
        1,
        "{text}"
    );
    assert_eq!(
        count("status changed from recovering to active"),
        1,
        "{text}"
    );
    assert_eq!(count("status changed from joining to catchup"), 2, "{text}");
    assert_eq!(count("status changed from catchup to ready"), 2, "{text}");
    assert_eq!(count("status changed"), 6, "{text}");
}

struct LogWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
