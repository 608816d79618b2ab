//! The disk seam: file operations an extension asks for (`Shard::disk`)
//! and the runtime performs on io_uring, never blocking the shard; each
//! completes later under its token (`Extension::disk_done`). A simulation
//! performs them itself (on an in-memory disk that can tear writes).

use std::path::PathBuf;

use bytes::Bytes;

/// Offsets and lengths of [`DiskOp::Write`] are multiples of this (the
/// runtime writes with O_DIRECT).
pub const ALIGN: usize = 4096;

/// A file operation for the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskOp {
    /// Writes `data` at `offset` of `path` (created if missing), then, with
    /// `sync`, waits until it is durable (fdatasync).
    Write {
        path: PathBuf,
        offset: u64,
        data: Bytes,
        sync: bool,
    },
    /// Replaces `path` with `data` atomically: a temporary file beside it,
    /// written and synced, renamed over it, and the directory synced.
    Replace { path: PathBuf, data: Bytes },
    /// Removes `path`; a missing file is not an error.
    Remove { path: PathBuf },
}

/// How an operation ended: an error names the file and what failed.
pub type DiskResult = Result<(), String>;

/// Replaces `path` with `data`: written beside it, synced, renamed over it,
/// and the directory synced. Blocking: the runtime runs it on its blocking
/// pool; `tandemd` also uses it before the shards start.
pub fn replace_file(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("new");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
