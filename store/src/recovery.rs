//! Reading a shard's journal back at start: every segment in order, the
//! messages still queued (with their positions), the segments they live in,
//! and where a torn tail was cut.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use hashbrown::{HashMap, HashSet};

use crate::record::{read_header, scan_with, RecordRef};

/// A queue's message: its queue and position.
pub type MessageKey = (Arc<str>, u64);

/// A segment as found on disk.
#[derive(Debug, Default)]
pub struct RecoveredSegment {
    pub number: u64,
    /// The messages of [`Recovered::queues`] it holds.
    pub live: Vec<MessageKey>,
    /// Its enqueue records.
    pub enqueues: usize,
}

/// A shard's journal as found on disk.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Messages still queued, per queue, by position.
    pub queues: HashMap<Arc<str>, BTreeMap<u64, Bytes>>,
    /// Delivery counts of the queued messages that have one.
    pub delivery_counts: HashMap<Arc<str>, BTreeMap<u64, u32>>,
    /// Each segment, oldest first.
    pub segments: Vec<RecoveredSegment>,
    /// The number the next segment takes.
    pub next_segment: u64,
    /// Torn tails cut: file, offset, why.
    pub torn: Vec<(PathBuf, usize, String)>,
    /// Files that are not segments of this journal (left alone).
    pub skipped: Vec<(PathBuf, String)>,
    /// Records read.
    pub records: usize,
}

/// Why a journal cannot be recovered.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("cannot read the journal directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {why}; start with --store-repair to cut the segment there (the records after it are lost)")]
    Corrupt { path: PathBuf, why: String },
    #[error("{path}: {why}")]
    Format { path: PathBuf, why: String },
}

/// The segment files of `dir` (`NNNN.jnl`), oldest first, read whole.
/// Blocking: called once at start, before the shard serves anything.
pub fn read_segments(dir: &Path) -> Result<Vec<(u64, PathBuf, Bytes)>, RecoverError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(RecoverError::Dir {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| RecoverError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(number) = number {
            let bytes = std::fs::read(&path).map_err(|source| RecoverError::Read {
                path: path.clone(),
                source,
            })?;
            found.push((number, path, Bytes::from(bytes)));
        }
    }
    found.sort_by_key(|(n, _, _)| *n);
    Ok(found)
}

/// Replays segments (oldest first) of shard `shard`.
pub fn recover(
    shard: u32,
    segments: Vec<(u64, PathBuf, Bytes)>,
    repair: bool,
) -> Result<Recovered, RecoverError> {
    let mut r = Recovered {
        next_segment: 1,
        ..Default::default()
    };
    let mut home: HashMap<MessageKey, u64> = HashMap::new();
    let mut names: HashSet<Arc<str>> = HashSet::new();
    let last = segments.len().saturating_sub(1);
    for (i, (number, path, bytes)) in segments.into_iter().enumerate() {
        r.next_segment = r.next_segment.max(number + 1);
        let header = match read_header(&bytes) {
            Ok(h) => h,
            // The newest segment's creation may have been torn by the crash.
            Err(crate::record::HeaderError::Short(n)) if i == last => {
                r.torn.push((path, n, "segment header incomplete".into()));
                continue;
            }
            Err(e) => {
                return Err(RecoverError::Format {
                    path,
                    why: e.to_string(),
                })
            }
        };
        if header.shard != shard || header.number != number {
            r.skipped.push((
                path,
                format!(
                    "header says shard {} segment {}, expected shard {shard} segment {number}",
                    header.shard, header.number
                ),
            ));
            continue;
        }
        let mut records = 0usize;
        let mut enqueues = 0usize;
        let scanned = scan_with(&bytes, repair, |record| {
            records += 1;
            match record {
                RecordRef::Enqueue {
                    queue,
                    position,
                    message,
                } => {
                    enqueues += 1;
                    let queue = intern(&mut names, queue);
                    home.insert((queue.clone(), position), number);
                    r.queues.entry(queue).or_default().insert(position, message);
                }
                RecordRef::Dequeue { queue, positions } => {
                    let queue = intern(&mut names, queue);
                    if let Some(q) = r.queues.get_mut(&queue) {
                        let mut counts = r.delivery_counts.get_mut(&queue);
                        for p in positions {
                            q.remove(&p);
                            home.remove(&(queue.clone(), p));
                            if let Some(c) = counts.as_mut() {
                                c.remove(&p);
                            }
                        }
                    }
                }
                RecordRef::Redelivered { queue, counts } => {
                    let queue = intern(&mut names, queue);
                    let Some(q) = r.queues.get(&queue) else {
                        return;
                    };
                    let known: Vec<(u64, u32)> = counts
                        .into_iter()
                        .filter(|(p, _)| q.contains_key(p))
                        .collect();
                    if !known.is_empty() {
                        r.delivery_counts.entry(queue).or_default().extend(known);
                    }
                }
            }
        })
        .map_err(|c| RecoverError::Corrupt {
            path: path.clone(),
            why: c.to_string(),
        })?;
        r.records += records;
        if let Some((offset, why)) = scanned.torn {
            r.torn.push((path.clone(), offset, why));
        }
        r.segments.push(RecoveredSegment {
            number,
            live: Vec::new(),
            enqueues,
        });
    }
    r.queues.retain(|_, q| !q.is_empty());
    r.delivery_counts.retain(|_, c| !c.is_empty());
    for (key, number) in home {
        if let Some(s) = r.segments.iter_mut().find(|s| s.number == number) {
            s.live.push(key);
        }
    }
    Ok(r)
}

/// The one shared copy of a queue's name.
fn intern(names: &mut HashSet<Arc<str>>, name: &str) -> Arc<str> {
    match names.get(name) {
        Some(n) => n.clone(),
        None => {
            let n: Arc<str> = Arc::from(name);
            names.insert(n.clone());
            n
        }
    }
}
