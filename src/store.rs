//! Opening the persistent store at start, before any shard runs: the durable
//! configuration every shard starts with, and each worker shard's journal
//! read back (blocking reads, done once before the broker serves anything).

use std::path::Path;
use std::time::Instant;

use tandem_shards::broker::ConfigOp;
use tandem_shards::placement::shard_of;
use tandem_store::ext::StoreSettings;
use tandem_store::recovery::{read_segments, recover, Recovered};

use crate::config::StoreConfig;

/// What the store holds at start.
pub struct Opened {
    pub settings: StoreSettings,
    pub initial_config: Vec<ConfigOp>,
    /// Per worker shard.
    pub recovered: Vec<Recovered>,
}

/// Reads the store in `cfg.dir` for a broker of `workers` worker shards.
pub fn open(cfg: &StoreConfig, workers: usize) -> Result<Opened, String> {
    let started = Instant::now();
    let settings = StoreSettings {
        dir: cfg.dir.clone(),
        segment_size: cfg.segment_size,
        sync: cfg.sync,
    };
    std::fs::create_dir_all(&cfg.dir)
        .map_err(|e| format!("store-dir {}: cannot create: {e}", cfg.dir.display()))?;
    let config_path = settings.config_path();
    let initial_config = match std::fs::read(&config_path) {
        Ok(bytes) => tandem_store::config_file::decode(&bytes.into())
            .map_err(|e| format!("{}: {e}", config_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("{}: cannot read: {e}", config_path.display())),
    };
    refuse_other_shard_counts(&cfg.dir, workers)?;
    let mut recovered = Vec::with_capacity(workers);
    let (mut messages, mut records) = (0usize, 0usize);
    for shard in 0..workers {
        let dir = settings.shard_dir(shard);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("store-dir {}: cannot create: {e}", dir.display()))?;
        let segments = read_segments(&dir).map_err(|e| e.to_string())?;
        let found = recover(shard as u32, segments, cfg.repair).map_err(|e| e.to_string())?;
        for (path, offset, why) in &found.torn {
            tracing::warn!(
                "store: cut a torn tail of {} at offset {offset} ({why}); everything before it is kept",
                path.display()
            );
        }
        for (path, why) in &found.skipped {
            tracing::warn!("store: skipped {} ({why})", path.display());
        }
        for queue in found.queues.keys() {
            let owner = shard_of(queue, workers);
            if owner != shard {
                return Err(format!(
                    "store-dir {}: queue '{queue}' was journalled by shard {shard} but {workers} worker shards place it on shard {owner}; start with the worker-threads the store was written with",
                    cfg.dir.display()
                ));
            }
        }
        messages += found.queues.values().map(|q| q.len()).sum::<usize>();
        records += found.records;
        recovered.push(found);
    }
    let queues = initial_config
        .iter()
        .filter(|op| matches!(op, ConfigOp::ReplaceQueue { .. }))
        .count();
    tracing::info!(
        "store: recovered {queues} durable queues and {messages} messages ({records} journal records) from {} in {:.3} s",
        cfg.dir.display(),
        started.elapsed().as_secs_f64()
    );
    if !cfg.sync {
        tracing::warn!(
            "store-sync = no: persistent messages are settled before they are on disk; a crash or power loss LOSES SETTLED MESSAGES. For benchmarks only."
        );
    }
    Ok(Opened {
        settings,
        initial_config,
        recovered,
    })
}

/// A journal of a shard this broker will not run, with messages in it, would
/// be recovered by nobody.
fn refuse_other_shard_counts(dir: &Path, workers: usize) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(n) = name
            .strip_prefix("shard-")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if n < workers {
            continue;
        }
        let segments = read_segments(&entry.path()).map_err(|e| e.to_string())?;
        let found = recover(n as u32, segments, false).map_err(|e| e.to_string())?;
        if !found.queues.is_empty() {
            return Err(format!(
                "store-dir {}: the journal of shard {n} holds messages, but this broker runs {workers} worker shards; start with the worker-threads the store was written with",
                dir.display()
            ));
        }
    }
    Ok(())
}
