//! Where the harness's work runs: one glommio executor (a thread with its own
//! io_uring) per connection, pinned to a core, so clients spread over the
//! machine's cores the way the broker's shards do.

use std::future::Future;

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

/// Memory glommio reserves per executor for file I/O buffers; the harness only
/// uses sockets, so a little is plenty (the default is 10 MiB, locked).
const IO_MEMORY: usize = 1 << 20;

/// The cores this process may run on, in order.
pub fn cores() -> Vec<usize> {
    tandem_shards::runtime::core_ids()
}

/// The core for the `k`-th executor of a run: round robin over `cores`.
pub fn core_for(cores: &[usize], k: usize) -> Option<usize> {
    (!cores.is_empty()).then(|| cores[k % cores.len()])
}

/// Runs the future `make` builds on a new executor pinned to `core`.
pub fn spawn<G, F, T>(
    name: String,
    core: Option<usize>,
    make: G,
) -> Result<ExecutorJoinHandle<T>, String>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let placement = core.map_or(Placement::Unbound, Placement::Fixed);
    LocalExecutorBuilder::new(placement)
        .name(&name)
        .io_memory(IO_MEMORY)
        .spawn(make)
        .map_err(|e| {
            format!(
                "cannot start executor {name}: {e} (tandem-perf needs io_uring, as tandemd does)"
            )
        })
}
