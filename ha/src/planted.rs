//! Bugs planted on purpose, to prove that the reliability suite's checkers
//! find what they look for (`ha/tests/cluster_search.rs`). They exist only
//! with the `planted-bugs` feature, which only the tests turn on, and each
//! is off until a test switches it on; without the feature every switch is a
//! constant `false` the compiler removes.

#[cfg(feature = "planted-bugs")]
use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(feature = "planted-bugs")]
static SETTLE_BEFORE_BACKUP_ACK: AtomicBool = AtomicBool::new(false);

/// The bug: a primary settles a publish without waiting for its backups.
/// Process-wide: a test that turns it on runs in a test binary of its own.
#[cfg(feature = "planted-bugs")]
pub fn plant_settle_before_backup_ack(on: bool) {
    SETTLE_BEFORE_BACKUP_ACK.store(on, Ordering::Relaxed);
}

/// Whether publishes settle before the backups acknowledge them.
#[inline]
pub fn settle_before_backup_ack() -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        SETTLE_BEFORE_BACKUP_ACK.load(Ordering::Relaxed)
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        false
    }
}
