//! What `data-dir` holds whatever else is on: a lock (one broker per
//! directory) and the broker's identity, a small file written once.
//!
//! ```toml
//! # identity: written by tandemd; do not copy it to another broker
//! format = 1
//! broker-id = "6f1c…"
//! ```

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The identity file's format this build writes and reads.
const FORMAT: i64 = 1;

/// The locked data directory: the lock holds while this lives.
pub struct DataDir {
    pub path: PathBuf,
    /// Persisted across restarts.
    pub broker_id: String,
    _lock: File,
}

impl DataDir {
    /// Creates `path` if needed, locks it (or says which broker holds it),
    /// and reads the identity, writing a new one on first use.
    pub fn open(path: &Path) -> Result<DataDir, String> {
        let shown = path.display();
        std::fs::create_dir_all(path)
            .map_err(|e| format!("data-dir {shown}: cannot create: {e}"))?;
        let lock = lock(&path.join("lock"))?;
        let broker_id = identity(&path.join("identity"))?;
        Ok(DataDir {
            path: path.to_owned(),
            broker_id,
            _lock: lock,
        })
    }
}

fn lock(path: &Path) -> Result<File, String> {
    let shown = path.display();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("{shown}: cannot open the data-dir lock: {e}"))?;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            format!(
                "data-dir {} is in use by another tandemd{}; give each broker its own --data-dir",
                path.parent().unwrap_or(path).display(),
                if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                }
            )
        } else {
            format!("{shown}: cannot lock: {err}")
        });
    }
    let _ = file.set_len(0);
    let _ = write!(file, "{}", std::process::id());
    Ok(file)
}

fn identity(path: &Path) -> Result<String, String> {
    let shown = path.display();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let table: toml::Table = toml::from_str(&text)
                .map_err(|e| format!("{shown}: not a Tandem identity file: {e}"))?;
            match table.get("format").and_then(toml::Value::as_integer) {
                Some(FORMAT) => {}
                Some(other) => {
                    return Err(format!(
                        "{shown}: identity format {other}, this build reads format {FORMAT} only"
                    ))
                }
                None => return Err(format!("{shown}: no format = {FORMAT} line")),
            }
            match table.get("broker-id").and_then(toml::Value::as_str) {
                Some(id) if !id.is_empty() => Ok(id.to_owned()),
                _ => Err(format!("{shown}: no broker-id")),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = new_uuid().map_err(|e| format!("cannot make a broker id: {e}"))?;
            let text = format!(
                "# identity: written by tandemd; do not copy it to another broker\nformat = {FORMAT}\nbroker-id = \"{id}\"\n"
            );
            tandem_shards::disk::replace_file(path, text.as_bytes())
                .map_err(|e| format!("{shown}: cannot write: {e}"))?;
            Ok(id)
        }
        Err(e) => Err(format!("{shown}: cannot read: {e}")),
    }
}

/// A random (version 4) UUID.
fn new_uuid() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tandem-datadir-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_broker_id_survives_a_restart_and_a_second_broker_is_refused() {
        let dir = temp("restart");
        let first = DataDir::open(&dir).expect("first");
        let id = first.broker_id.clone();
        assert_eq!(id.len(), 36, "{id}");
        let second = DataDir::open(&dir).err().expect("locked");
        assert!(second.contains("in use by another tandemd"), "{second}");
        assert!(second.contains(&std::process::id().to_string()), "{second}");
        drop(first);
        let again = DataDir::open(&dir).expect("unlocked");
        assert_eq!(again.broker_id, id);
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_identity_of_another_format_is_refused() {
        let dir = temp("format");
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("identity"), "format = 9\nbroker-id = \"x\"\n").expect("write");
        let err = DataDir::open(&dir).err().expect("refused");
        assert!(err.contains("identity format 9"), "{err}");
        std::fs::write(dir.join("identity"), "not toml [").expect("write");
        let err = DataDir::open(&dir).err().expect("refused");
        assert!(err.contains("not a Tandem identity file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
