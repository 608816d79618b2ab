//! An in-memory disk that performs [`DiskOp`]s the way a real one may fail
//! them: writes are volatile until synced, a crash keeps only what was synced
//! (and, if asked, a torn prefix of the write that was running), and writes
//! can be made to fail (a full disk). For tests and simulations of the store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tandem_shards::disk::{DiskOp, DiskResult};

#[derive(Debug, Default, Clone)]
struct File {
    durable: Vec<u8>,
    volatile: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct MemDisk {
    files: BTreeMap<PathBuf, File>,
    /// Writes still to fail.
    failing: usize,
}

impl MemDisk {
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    /// The next `n` writes fail (as on a full disk), leaving nothing behind.
    pub fn fail_writes(&mut self, n: usize) {
        self.failing = n;
    }

    /// Performs `op` whole (a sync makes it durable).
    pub fn apply(&mut self, op: &DiskOp) -> DiskResult {
        match op {
            DiskOp::Write {
                path,
                offset,
                data,
                sync,
            } => {
                if self.failing > 0 {
                    self.failing -= 1;
                    return Err(format!("{}: no space left on device", path.display()));
                }
                let f = self.files.entry(path.clone()).or_default();
                write_at(&mut f.volatile, *offset, data);
                if *sync {
                    f.durable = f.volatile.clone();
                }
            }
            DiskOp::Replace { path, data } => {
                let f = self.files.entry(path.clone()).or_default();
                f.volatile = data.to_vec();
                f.durable = f.volatile.clone();
            }
            DiskOp::Remove { path } => {
                self.files.remove(path);
            }
        }
        Ok(())
    }

    /// A crash while `op` (a write) was running and had reached `torn` of its
    /// bytes: they are on disk, nothing after them is. Then the crash.
    pub fn crash_during(&mut self, op: &DiskOp, torn: usize) {
        if let DiskOp::Write {
            path, offset, data, ..
        } = op
        {
            let f = self.files.entry(path.clone()).or_default();
            let mut torn_state = f.durable.clone();
            write_at(&mut torn_state, *offset, &data[..torn.min(data.len())]);
            f.durable = torn_state;
        }
        self.crash();
    }

    /// Power loss: only what was synced remains.
    pub fn crash(&mut self) {
        for f in self.files.values_mut() {
            f.volatile = f.durable.clone();
        }
    }

    /// What `path` holds now.
    pub fn read(&self, path: &Path) -> Option<Bytes> {
        self.files
            .get(path)
            .map(|f| Bytes::from(f.volatile.clone()))
    }

    /// The journal segments in `dir`, oldest first, as recovery reads them.
    pub fn segments(&self, dir: &Path) -> Vec<(u64, PathBuf, Bytes)> {
        self.files
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .filter_map(|(p, f)| {
                let n = p
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".jnl")?
                    .parse()
                    .ok()?;
                Some((n, p.clone(), Bytes::from(f.volatile.clone())))
            })
            .collect()
    }

    /// Bytes held by files in `dir`.
    pub fn used(&self, dir: &Path) -> usize {
        self.files
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(_, f)| f.volatile.len())
            .sum()
    }
}

fn write_at(file: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let offset = offset as usize;
    if file.len() < offset + data.len() {
        file.resize(offset + data.len(), 0);
    }
    file[offset..offset + data.len()].copy_from_slice(data);
}
