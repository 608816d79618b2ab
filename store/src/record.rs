//! The journal's on-disk format, sans I/O.
//!
//! A segment file starts with one [`BLOCK`]-sized header block (magic, format
//! version, shard, segment number, CRC32C), and then holds records back to
//! back. Each record is
//!
//! ```text
//! len u32 LE | crc32c u32 LE | kind u8 | body (len - 1 bytes)
//! ```
//!
//! where `len` counts the kind and the body and the CRC covers them. A record
//! of `len` 0 does not exist: zeros are the padding after the last write.
//!
//! Bodies: `enqueue` is the queue name (u16 LE length, UTF-8), the position
//! (u64 LE) and the message bytes as received; `dequeue` is the queue name, a
//! count (u32 LE) and that many positions (u64 LE); `redelivered` is the queue
//! name, a count (u32 LE) and that many pairs of a position (u64 LE) and its new
//! delivery count (u32 LE).

use bytes::{BufMut, Bytes, BytesMut};

/// Alignment of every write (O_DIRECT) and the size of a segment's header.
pub const BLOCK: usize = 4096;
/// The format version this build writes and reads.
pub const FORMAT: u32 = 1;
const MAGIC: &[u8; 8] = b"TANDEMJ\0";
const KIND_ENQUEUE: u8 = 1;
const KIND_DEQUEUE: u8 = 2;
const KIND_REDELIVERED: u8 = 3;
/// Largest record accepted when reading (a message is far smaller).
const MAX_RECORD: usize = 1 << 30;

/// One record of the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Enqueue {
        queue: String,
        position: u64,
        message: Bytes,
    },
    Dequeue {
        queue: String,
        positions: Vec<u64>,
    },
    Redelivered {
        queue: String,
        counts: Vec<(u64, u32)>,
    },
}

impl Record {
    /// Appends the record to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Record::Enqueue {
                queue,
                position,
                message,
            } => encode_enqueue(out, queue, *position, message),
            Record::Dequeue { queue, positions } => encode_dequeue(out, queue, positions),
            Record::Redelivered { queue, counts } => encode_redelivered(out, queue, counts),
        }
    }
}

/// Appends an `enqueue` record without building a [`Record`].
pub fn encode_enqueue(out: &mut BytesMut, queue: &str, position: u64, message: &[u8]) {
    let name = name_bytes(queue);
    let len = 1 + 2 + name.len() + 8 + message.len();
    let start = begin(out, len, KIND_ENQUEUE);
    out.put_u16_le(name.len() as u16);
    out.put_slice(name);
    out.put_u64_le(position);
    out.put_slice(message);
    finish(out, start);
}

/// Appends a `dequeue` record without building a [`Record`].
pub fn encode_dequeue(out: &mut BytesMut, queue: &str, positions: &[u64]) {
    let name = name_bytes(queue);
    let len = 1 + 2 + name.len() + 4 + 8 * positions.len();
    let start = begin(out, len, KIND_DEQUEUE);
    out.put_u16_le(name.len() as u16);
    out.put_slice(name);
    out.put_u32_le(positions.len() as u32);
    for p in positions {
        out.put_u64_le(*p);
    }
    finish(out, start);
}

/// Appends a `redelivered` record without building a [`Record`].
pub fn encode_redelivered(out: &mut BytesMut, queue: &str, counts: &[(u64, u32)]) {
    let name = name_bytes(queue);
    let len = 1 + 2 + name.len() + 4 + 12 * counts.len();
    let start = begin(out, len, KIND_REDELIVERED);
    out.put_u16_le(name.len() as u16);
    out.put_slice(name);
    out.put_u32_le(counts.len() as u32);
    for (p, c) in counts {
        out.put_u64_le(*p);
        out.put_u32_le(*c);
    }
    finish(out, start);
}

/// Queue names are short (the broker limits them); a longer one is cut at a
/// character boundary rather than written with a wrong length.
fn name_bytes(queue: &str) -> &[u8] {
    let mut end = queue.len().min(u16::MAX as usize);
    while !queue.is_char_boundary(end) {
        end -= 1;
    }
    &queue.as_bytes()[..end]
}

fn begin(out: &mut BytesMut, len: usize, kind: u8) -> usize {
    out.reserve(8 + len);
    out.put_u32_le(len as u32);
    out.put_u32_le(0); // the CRC, filled in by `finish`
    let start = out.len();
    out.put_u8(kind);
    start
}

fn finish(out: &mut BytesMut, start: usize) {
    let crc = crc32c::crc32c(&out[start..]);
    out[start - 4..start].copy_from_slice(&crc.to_le_bytes());
}

/// The header block of segment `number` of shard `shard`.
pub fn segment_header(shard: u32, number: u64) -> BytesMut {
    let mut b = BytesMut::with_capacity(BLOCK);
    b.put_slice(MAGIC);
    b.put_u32_le(FORMAT);
    b.put_u32_le(shard);
    b.put_u64_le(number);
    let crc = crc32c::crc32c(&b);
    b.put_u32_le(crc);
    b.resize(BLOCK, 0);
    b
}

/// What a segment's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub shard: u32,
    pub number: u64,
}

/// Why a file cannot be read as a segment at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a Tandem journal segment (bad magic)")]
    Magic,
    #[error("journal format version {0}, this build reads version {FORMAT} only")]
    Version(u32),
    #[error("segment header is damaged (checksum mismatch)")]
    Checksum,
    #[error("file is shorter than a segment header ({0} bytes)")]
    Short(usize),
}

/// Reads a segment's header block.
pub fn read_header(file: &[u8]) -> Result<SegmentHeader, HeaderError> {
    if file.len() < BLOCK {
        // A header is written whole before any record: a shorter file is a
        // segment whose creation was torn (or not ours).
        return Err(HeaderError::Short(file.len()));
    }
    if &file[..8] != MAGIC {
        return Err(HeaderError::Magic);
    }
    let word = |at: usize| u32::from_le_bytes([file[at], file[at + 1], file[at + 2], file[at + 3]]);
    let version = word(8);
    if version != FORMAT {
        return Err(HeaderError::Version(version));
    }
    let crc = word(24);
    if crc32c::crc32c(&file[..24]) != crc {
        return Err(HeaderError::Checksum);
    }
    let mut number = [0u8; 8];
    number.copy_from_slice(&file[16..24]);
    Ok(SegmentHeader {
        shard: word(12),
        number: u64::from_le_bytes(number),
    })
}

/// The records of a segment as read back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    pub records: Vec<Record>,
    /// Offset just past the last good record (where the next write goes).
    pub end: usize,
    /// The tail after `end` that was cut: its offset and why, if the file
    /// holds anything there but zero padding.
    pub torn: Option<(usize, String)>,
}

/// A bad record followed by good ones: the file is damaged in the middle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("damaged record at offset {offset} ({why}), followed by a valid record at offset {next}")]
pub struct Corrupt {
    pub offset: usize,
    pub why: String,
    pub next: usize,
}

/// A record as read, borrowing its queue's name from the file.
#[derive(Debug, PartialEq, Eq)]
pub enum RecordRef<'a> {
    Enqueue {
        queue: &'a str,
        position: u64,
        message: Bytes,
    },
    Dequeue {
        queue: &'a str,
        positions: Vec<u64>,
    },
    Redelivered {
        queue: &'a str,
        counts: Vec<(u64, u32)>,
    },
}

impl RecordRef<'_> {
    pub fn to_owned(&self) -> Record {
        match self {
            RecordRef::Enqueue {
                queue,
                position,
                message,
            } => Record::Enqueue {
                queue: queue.to_string(),
                position: *position,
                message: message.clone(),
            },
            RecordRef::Dequeue { queue, positions } => Record::Dequeue {
                queue: queue.to_string(),
                positions: positions.clone(),
            },
            RecordRef::Redelivered { queue, counts } => Record::Redelivered {
                queue: queue.to_string(),
                counts: counts.clone(),
            },
        }
    }
}

/// Where a segment's good records end, and the tail cut after them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanEnd {
    /// Offset just past the last good record (where the next write goes).
    pub end: usize,
    /// The tail after `end` that was cut: its offset and why, if the file
    /// holds anything there but zero padding.
    pub torn: Option<(usize, String)>,
}

/// Reads the records of a whole segment file (header included). A bad record
/// with no valid record after it is a torn tail and is cut; a bad record with
/// a valid one after it is corruption in the middle ([`Corrupt`]), unless
/// `repair` is set, when everything from the bad record on is cut too.
pub fn scan(file: &Bytes, repair: bool) -> Result<Scan, Corrupt> {
    let mut records = Vec::new();
    let end = scan_with(file, repair, |r| records.push(r.to_owned()))?;
    Ok(Scan {
        records,
        end: end.end,
        torn: end.torn,
    })
}

/// [`scan`], handing each record to `visit` as it is read (no copy of the
/// queue's name; the message is a slice of `file`).
pub fn scan_with<'a>(
    file: &'a Bytes,
    repair: bool,
    mut visit: impl FnMut(RecordRef<'a>),
) -> Result<ScanEnd, Corrupt> {
    let mut scan = ScanEnd {
        end: BLOCK.min(file.len()),
        torn: None,
    };
    let mut at = scan.end;
    while at < file.len() {
        match record_at(file, at) {
            Ok(Some((record, next))) => {
                visit(record);
                at = next;
                scan.end = next;
            }
            Ok(None) | Err(_) if file[at..].iter().all(|b| *b == 0) => break,
            Ok(None) => {
                let why = "zeros where a record should be".to_string();
                return finish_scan(file, scan, at, why, repair);
            }
            Err(why) => return finish_scan(file, scan, at, why, repair),
        }
    }
    Ok(scan)
}

fn finish_scan(
    file: &Bytes,
    mut scan: ScanEnd,
    at: usize,
    why: String,
    repair: bool,
) -> Result<ScanEnd, Corrupt> {
    if let Some(next) = ((at + 1)..file.len()).find(|&n| matches!(record_at(file, n), Ok(Some(_))))
    {
        if !repair {
            return Err(Corrupt {
                offset: at,
                why,
                next,
            });
        }
    }
    scan.torn = Some((at, why));
    Ok(scan)
}

/// The record at `at` and the offset after it; `Ok(None)` for a zero length.
fn record_at(file: &Bytes, at: usize) -> Result<Option<(RecordRef<'_>, usize)>, String> {
    let head = file
        .get(at..at + 8)
        .ok_or_else(|| format!("{} bytes left, less than a record header", file.len() - at))?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 {
        return Ok(None);
    }
    if len > MAX_RECORD {
        return Err(format!("record length {len} is implausible"));
    }
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let end = at + 8 + len;
    let body = file
        .get(at + 8..end)
        .ok_or_else(|| format!("record of {len} bytes runs past the end of the file"))?;
    if crc32c::crc32c(body) != crc {
        return Err("checksum mismatch".into());
    }
    let record = decode_body(file, at + 8, end).map_err(str::to_owned)?;
    Ok(Some((record, end)))
}

/// The record in `file[start..end]`, its checksum already verified.
fn decode_body(file: &Bytes, start: usize, end: usize) -> Result<RecordRef<'_>, &'static str> {
    let b = &file[start..end];
    let mut r = Reader { b, at: 1 };
    let queue = r.name()?;
    match b.first() {
        Some(&KIND_ENQUEUE) => {
            let position = r.u64()?;
            Ok(RecordRef::Enqueue {
                queue,
                position,
                message: file.slice(start + r.at..end),
            })
        }
        Some(&KIND_DEQUEUE) => {
            let count = r.u32()? as usize;
            if count > (b.len() - r.at) / 8 {
                return Err("dequeue record counts more positions than it holds");
            }
            let positions = (0..count).map(|_| r.u64()).collect::<Result<_, _>>()?;
            if r.at != b.len() {
                return Err("dequeue record has bytes after its positions");
            }
            Ok(RecordRef::Dequeue { queue, positions })
        }
        Some(&KIND_REDELIVERED) => {
            let count = r.u32()? as usize;
            if count > (b.len() - r.at) / 12 {
                return Err("redelivered record counts more entries than it holds");
            }
            let counts = (0..count)
                .map(|_| Ok((r.u64()?, r.u32()?)))
                .collect::<Result<_, &'static str>>()?;
            if r.at != b.len() {
                return Err("redelivered record has bytes after its entries");
            }
            Ok(RecordRef::Redelivered { queue, counts })
        }
        _ => Err("unknown record kind"),
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let s = self
            .b
            .get(self.at..self.at + n)
            .ok_or("record body is shorter than its fields")?;
        self.at += n;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn name(&mut self) -> Result<&'a str, &'static str> {
        let s = self.take(2)?;
        let len = usize::from(u16::from_le_bytes([s[0], s[1]]));
        let name = self.take(len)?;
        std::str::from_utf8(name).map_err(|_| "queue name is not UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(records: &[Record]) -> BytesMut {
        let mut file = segment_header(3, 7);
        for r in records {
            r.encode(&mut file);
        }
        file
    }

    fn some() -> Vec<Record> {
        vec![
            Record::Enqueue {
                queue: "orders".into(),
                position: 1,
                message: Bytes::from_static(b"first"),
            },
            Record::Enqueue {
                queue: "orders".into(),
                position: 2,
                message: Bytes::from_static(b"second"),
            },
            Record::Dequeue {
                queue: "orders".into(),
                positions: vec![1],
            },
            Record::Redelivered {
                queue: "orders".into(),
                counts: vec![(2, 3)],
            },
        ]
    }

    #[test]
    fn records_round_trip_after_the_header() {
        let file = segment(&some()).freeze();
        assert_eq!(
            read_header(&file),
            Ok(SegmentHeader {
                shard: 3,
                number: 7
            })
        );
        let scan = scan(&file, false).expect("clean");
        assert_eq!(scan.records, some());
        assert_eq!(scan.end, file.len());
        assert_eq!(scan.torn, None);
    }

    #[test]
    fn zero_padding_is_not_a_record_and_not_a_tear() {
        let mut file = segment(&some());
        let end = file.len();
        file.resize(end.div_ceil(BLOCK) * BLOCK, 0);
        let scan = scan(&file.freeze(), false).expect("clean");
        assert_eq!(
            (scan.records.len(), scan.end, scan.torn),
            (some().len(), end, None)
        );
    }

    #[test]
    fn a_cut_at_any_byte_keeps_every_whole_record_before_it() {
        let whole = segment(&some()).freeze();
        let ends: Vec<usize> = {
            let s = scan(&whole, false).expect("clean");
            let mut ends = vec![BLOCK];
            let mut b = segment_header(3, 7);
            for r in &s.records {
                r.encode(&mut b);
                ends.push(b.len());
            }
            ends
        };
        for cut in BLOCK..whole.len() {
            let s = scan(&whole.slice(..cut), false).expect("a torn tail is not corruption");
            let whole_records = ends.iter().filter(|e| **e <= cut).count() - 1;
            assert_eq!(s.records, some()[..whole_records], "cut at {cut}");
            assert_eq!(s.torn.is_some(), !ends.contains(&cut), "cut at {cut}");
        }
    }

    #[test]
    fn a_bad_record_followed_by_good_ones_is_corruption_in_the_middle() {
        let mut file = segment(&some());
        let first_body = BLOCK + 8 + 3; // inside the first record's name
        file[first_body] ^= 0xff;
        let err = scan(&file.clone().freeze(), false).expect_err("corrupt middle");
        assert_eq!(err.offset, BLOCK);
        assert!(err.next > BLOCK, "{err}");
        // With repair, the damaged record and everything after it are cut.
        let repaired = scan(&file.freeze(), true).expect("repaired");
        assert!(repaired.records.is_empty());
        assert_eq!(repaired.torn.map(|t| t.0), Some(BLOCK));
    }

    #[test]
    fn headers_say_what_is_wrong() {
        assert_eq!(read_header(b"short"), Err(HeaderError::Short(5)));
        let mut h = segment_header(0, 1);
        h[8] = 9;
        assert_eq!(read_header(&h), Err(HeaderError::Version(9)));
        let mut h = segment_header(0, 1);
        h[0] = b'X';
        assert_eq!(read_header(&h), Err(HeaderError::Magic));
        let mut h = segment_header(0, 1);
        h[16] ^= 1;
        assert_eq!(read_header(&h), Err(HeaderError::Checksum));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_after_a_header_never_panic(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let mut file = segment_header(0, 1);
            file.extend_from_slice(&tail);
            let _ = scan(&file.clone().freeze(), false);
            let repaired = scan(&file.freeze(), true);
            proptest::prop_assert!(repaired.is_ok());
        }
    }
}
