//! One shard's journal, sans I/O: it turns enqueues and dequeues into
//! records, groups them into writes (one in flight; what arrives meanwhile is
//! the next group), tracks which segment holds each live message, and says
//! which settlements a finished write releases and which old segments can go.
//!
//! Writes are aligned ([`BLOCK`]): each group is written from the start of
//! the block holding the end of the last one, so that block's bytes are
//! written again followed by the new records, and the write is padded with
//! zeros to a whole block. Records stay back to back in the file; zeros
//! follow only the last one.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use hashbrown::{HashMap, HashSet};
use tandem_shards::disk::DiskOp;

use crate::record::{encode_dequeue, encode_enqueue, encode_redelivered, segment_header, BLOCK};

/// The path of segment `number` in `dir`.
pub fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016}.jnl"))
}

/// The segment being appended to.
#[derive(Debug)]
struct Current {
    number: u64,
    /// Offset just past the last record written (or being written).
    end: u64,
}

/// A segment before the current one.
#[derive(Debug, Clone, Copy)]
struct Segment {
    number: u64,
    /// Messages in it still queued.
    live: usize,
    /// Enqueue records in it.
    written: usize,
}

/// Below this share of live messages (1 in 4) the oldest segment's live
/// messages are written again into the current one, so it can go.
const COMPACT_BELOW: usize = 4;

/// The group being written.
#[derive(Debug)]
struct InFlight {
    token: u64,
    /// Where its data starts, and that data up to the last record (its
    /// padding excluded): written again if the write fails.
    start: u64,
    data: Bytes,
    /// The segment's end before it.
    end_before: u64,
    /// Settlements it releases: per queue, every position up to this one.
    releases: HashMap<Arc<str>, u64>,
    /// Old segments of the messages it writes again: each counts one live
    /// message fewer once the write is durable (not before, or the old copy
    /// could go while the new one is not on disk yet).
    moves: Vec<u64>,
}

/// What a write that ended means.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Per queue, every position up to this one is durable (or needed no
    /// write): its settlements may go.
    pub releases: Vec<(Arc<str>, u64)>,
}

pub struct Journal {
    shard: u32,
    dir: PathBuf,
    segment_size: u64,
    current: Current,
    /// Segments before the current one with live messages, oldest first, and
    /// how many each holds; removed oldest first once empty (so no dequeue
    /// record is lost while the message it dequeues may still be read).
    older: VecDeque<Segment>,
    /// Live messages written or being written: their segment.
    live: HashMap<(Arc<str>, u64), u64>,
    /// Live messages of the current segment, and enqueue records in it.
    current_live: usize,
    current_written: usize,
    /// The old segment whose live messages are being rewritten.
    compacting: Option<u64>,
    /// Enqueue records in the pending group (the segment it goes to counts
    /// them when it is written, whether or not they were dequeued since).
    pending_written: usize,
    /// Old segments of the messages rewritten into the pending group.
    pending_moves: Vec<u64>,
    /// The next write as it grows: the bytes of the block holding the
    /// segment's end, up to the end (`tail` of them; written again before the
    /// new records), then the records not written yet.
    buf: BytesMut,
    tail: usize,
    /// The messages among the records not written yet.
    pending_enqueues: HashSet<(Arc<str>, u64)>,
    /// Settlements the pending group will release.
    pending_releases: HashMap<Arc<str>, u64>,
    /// Queues with a message in the pending group or the write in flight (a
    /// message that needs no write waits behind them, as releases are
    /// cumulative).
    busy: HashSet<Arc<str>>,
    in_flight: Option<InFlight>,
    /// A write failed: its records lead the next one, in the same segment
    /// (the segment of their messages is already noted).
    retrying: bool,
}

impl Journal {
    /// A journal starting a new segment `number` (after recovery, the one
    /// after the last found).
    pub fn new(shard: u32, dir: PathBuf, segment_size: u64, number: u64) -> Journal {
        Journal {
            shard,
            dir,
            segment_size: segment_size.max(2 * BLOCK as u64),
            current: Current {
                number,
                end: BLOCK as u64,
            },
            older: VecDeque::new(),
            live: HashMap::new(),
            current_live: 0,
            current_written: 0,
            compacting: None,
            pending_written: 0,
            pending_moves: Vec::new(),
            buf: segment_header(shard, number),
            tail: BLOCK,
            pending_enqueues: HashSet::new(),
            pending_releases: HashMap::new(),
            busy: HashSet::new(),
            in_flight: None,
            retrying: false,
        }
    }

    /// A recovered segment of `written` enqueue records whose messages `live`
    /// are still queued.
    pub fn recovered_segment(&mut self, number: u64, live: Vec<(Arc<str>, u64)>, written: usize) {
        let count = live.len();
        for key in live {
            self.live.insert(key, number);
        }
        self.older.push_back(Segment {
            number,
            live: count,
            written,
        });
    }

    /// Old segments that hold nothing live any more (oldest first): remove
    /// them.
    pub fn collect(&mut self) -> Vec<DiskOp> {
        let mut ops = Vec::new();
        while let Some(&Segment {
            number, live: 0, ..
        }) = self.older.front()
        {
            self.older.pop_front();
            if self.compacting == Some(number) {
                self.compacting = None;
            }
            ops.push(DiskOp::Remove {
                path: segment_path(&self.dir, number),
            });
        }
        ops
    }

    /// A persistent message was stored at `position` of `queue`.
    pub fn enqueue(&mut self, queue: &Arc<str>, position: u64, message: &[u8]) {
        encode_enqueue(&mut self.buf, queue, position, message);
        self.pending_enqueues.insert((queue.clone(), position));
        self.pending_written += 1;
        self.note(queue, position);
        self.busy.insert(queue.clone());
    }

    /// A message that needs no write was stored at `position` of `queue`: its
    /// settlement can go now, unless earlier ones of the queue are still
    /// being written (then it goes with them).
    pub fn pass(&mut self, queue: &Arc<str>, position: u64) -> Option<u64> {
        if !self.busy.contains(queue) {
            return Some(position);
        }
        self.note(queue, position);
        None
    }

    fn note(&mut self, queue: &Arc<str>, position: u64) {
        let upto = self.pending_releases.entry(queue.clone()).or_default();
        *upto = (*upto).max(position);
    }

    /// The live messages of the oldest segment, when few of its messages are
    /// still live and older segments pile up: the caller writes each again
    /// ([`Journal::rewrite`]) and the segment can go. Asked once per segment.
    pub fn compaction(&mut self) -> Option<Vec<(Arc<str>, u64)>> {
        let oldest = *self.older.front()?;
        let sparse = oldest.live > 0 && oldest.live * COMPACT_BELOW <= oldest.written;
        if !sparse || self.compacting == Some(oldest.number) || self.older.len() < 2 {
            return None;
        }
        self.compacting = Some(oldest.number);
        Some(
            self.live
                .iter()
                .filter(|(_, s)| **s == oldest.number)
                .map(|(k, _)| k.clone())
                .collect(),
        )
    }

    /// Writes a live message of an old segment again, into the current one,
    /// with its delivery count if it has one; `None` as the message: it is
    /// gone after all (nothing to keep).
    pub fn rewrite(&mut self, queue: &Arc<str>, position: u64, message: Option<(&[u8], u32)>) {
        let key = (queue.clone(), position);
        let Some(segment) = self.live.remove(&key) else {
            return;
        };
        let Some((message, delivery_count)) = message else {
            self.forget(segment);
            return;
        };
        encode_enqueue(&mut self.buf, queue, position, message);
        if delivery_count > 0 {
            encode_redelivered(&mut self.buf, queue, &[(position, delivery_count)]);
        }
        self.pending_enqueues.insert(key);
        self.pending_written += 1;
        // The old segment keeps counting it until the new copy is durable.
        self.pending_moves.push(segment);
    }

    /// Deliveries of messages of `queue` failed: the new delivery counts of
    /// those that are written (or pending).
    pub fn redelivered(&mut self, queue: &Arc<str>, counts: &[(u64, u32)]) {
        let kept: Vec<(u64, u32)> = counts
            .iter()
            .filter(|(p, _)| {
                let key = (queue.clone(), *p);
                self.live.contains_key(&key) || self.pending_enqueues.contains(&key)
            })
            .copied()
            .collect();
        if !kept.is_empty() {
            encode_redelivered(&mut self.buf, queue, &kept);
        }
    }

    /// Messages left `queue`: those that were written (or are pending) get a
    /// dequeue record; a segment left with none live can go.
    pub fn dequeue(&mut self, queue: &Arc<str>, positions: &[u64]) {
        let mut written = Vec::new();
        for &p in positions {
            let key = (queue.clone(), p);
            if self.pending_enqueues.remove(&key) {
                // Not written yet: the dequeue still goes after it, in order.
                written.push(p);
            } else if let Some(segment) = self.live.remove(&key) {
                self.forget(segment);
                written.push(p);
            }
        }
        if !written.is_empty() {
            encode_dequeue(&mut self.buf, queue, &written);
        }
    }

    /// Recovered messages nobody will have (their queue is no longer
    /// declared): dequeued in the journal, so that a queue declared later
    /// under the same name does not get them back.
    pub fn discard(&mut self, queue: &str, positions: &[u64]) {
        if !positions.is_empty() {
            encode_dequeue(&mut self.buf, queue, positions);
        }
    }

    /// Every live message of `queue` (deleted or purged): dequeued.
    pub fn drop_queue(&mut self, queue: &Arc<str>) {
        let mut positions: Vec<u64> = self
            .live
            .keys()
            .chain(self.pending_enqueues.iter())
            .filter(|(q, _)| q == queue)
            .map(|(_, p)| *p)
            .collect();
        positions.sort_unstable();
        positions.dedup();
        self.dequeue(queue, &positions);
    }

    fn forget(&mut self, segment: u64) {
        if segment == self.current.number {
            self.current_live = self.current_live.saturating_sub(1);
        } else if let Some(s) = self.older.iter_mut().find(|s| s.number == segment) {
            s.live = s.live.saturating_sub(1);
        }
    }

    /// Whether a write is running.
    pub fn writing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether records wait to be written.
    fn pending(&self) -> bool {
        self.buf.len() > self.tail
    }

    /// The next write, if none is running and records wait: the group of
    /// everything pending, under `token`.
    pub fn next_write(&mut self, token: u64) -> Option<DiskOp> {
        if self.in_flight.is_some() || !self.pending() {
            return None;
        }
        let records = (self.buf.len() - self.tail) as u64;
        let full = self.current.end + records > self.segment_size;
        if full && self.current.end > BLOCK as u64 && !self.retrying {
            self.roll();
        }
        self.retrying = false;
        let start = self.current.end - self.tail as u64;
        let mut data = self.buf.split();
        let end = start + data.len() as u64;
        // The next write starts with the block that holds this one's end.
        let tail_from = (data.len() / BLOCK) * BLOCK;
        self.buf.extend_from_slice(&data[tail_from..]);
        self.tail = self.buf.len();
        let unpadded = data.len();
        data.resize(unpadded.div_ceil(BLOCK) * BLOCK, 0);
        let data = data.freeze();
        let number = self.current.number;
        for key in self.pending_enqueues.drain() {
            self.live.insert(key, number);
            self.current_live += 1;
        }
        self.current_written += std::mem::take(&mut self.pending_written);
        let end_before = self.current.end;
        self.current.end = end;
        self.in_flight = Some(InFlight {
            token,
            start,
            data: data.slice(..unpadded),
            end_before,
            releases: std::mem::take(&mut self.pending_releases),
            moves: std::mem::take(&mut self.pending_moves),
        });
        Some(DiskOp::Write {
            path: segment_path(&self.dir, number),
            offset: start,
            data,
            sync: true,
        })
    }

    /// Settlements that need no write and wait behind nothing: release now.
    pub fn take_passed(&mut self) -> Vec<(Arc<str>, u64)> {
        if self.pending() || self.in_flight.is_some() {
            return Vec::new();
        }
        self.busy.clear();
        self.pending_releases.drain().collect()
    }

    /// Starts the next segment: the pending records move behind its header.
    fn roll(&mut self) {
        let old = self.current.number;
        self.older.push_back(Segment {
            number: old,
            live: self.current_live,
            written: self.current_written,
        });
        self.current_written = 0;
        let number = old + 1;
        let mut buf = segment_header(self.shard, number);
        buf.extend_from_slice(&self.buf[self.tail..]);
        self.buf = buf;
        self.tail = BLOCK;
        self.current = Current {
            number,
            end: BLOCK as u64,
        };
        self.current_live = 0;
    }

    /// The write `token` ended: on success what it releases; on failure
    /// nothing (its records lead the next write, at the same offset).
    pub fn written(&mut self, token: u64, ok: bool) -> Written {
        let Some(flight) = self.in_flight.take_if(|f| f.token == token) else {
            return Written::default();
        };
        if !ok {
            // Back to before the write: its bytes, then what came since.
            let mut again = BytesMut::from(&flight.data[..]);
            again.extend_from_slice(&self.buf[self.tail..]);
            self.tail = (flight.end_before - flight.start) as usize;
            self.buf = again;
            self.current.end = flight.end_before;
            for (q, p) in flight.releases {
                self.note(&q, p);
            }
            self.pending_moves.extend(flight.moves);
            self.retrying = true;
            return Written::default();
        }
        for segment in flight.moves {
            self.forget(segment);
        }
        let mut releases: Vec<(Arc<str>, u64)> = flight.releases.into_iter().collect();
        if !self.pending() {
            // Nothing more is being written for any queue: what passed
            // meanwhile goes too.
            self.busy.clear();
            releases.extend(self.pending_releases.drain());
        }
        releases.sort();
        Written { releases }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem_disk::MemDisk;
    use crate::recovery::recover;

    /// One long-lived message, then many that come and go: with compaction
    /// the long-lived one does not keep every later segment on disk.
    fn churn(compact: bool) -> (usize, usize) {
        let dir = PathBuf::from("/j");
        let mut disk = MemDisk::new();
        let mut j = Journal::new(0, dir.clone(), 64 * 1024, 1);
        let q: Arc<str> = Arc::from("q");
        let body = vec![7u8; 1000];
        j.enqueue(&q, 1, b"stays");
        for (token, p) in (2..3000u64).enumerate() {
            j.enqueue(&q, p, &body);
            j.dequeue(&q, &[p]);
            if compact {
                if let Some(keys) = j.compaction() {
                    for (queue, position) in keys {
                        let message = (position == 1).then_some((&b"stays"[..], 0));
                        j.rewrite(&queue, position, message);
                    }
                }
            }
            if let Some(op) = j.next_write(token as u64) {
                disk.apply(&op).expect("write");
                j.written(token as u64, true);
            }
            for op in j.collect() {
                disk.apply(&op).expect("remove");
            }
        }
        disk.crash();
        let got = recover(0, disk.segments(&dir), false).expect("recover");
        assert_eq!(
            got.queues
                .get("q")
                .map(|m| m.values().cloned().collect::<Vec<_>>()),
            Some(vec![Bytes::from_static(b"stays")]),
            "only the long-lived message is queued"
        );
        (disk.segments(&dir).len(), disk.used(&dir))
    }

    #[test]
    fn a_long_lived_message_does_not_pin_the_journal() {
        let (segments, used) = churn(true);
        assert!(segments <= 3, "{segments} segments, {used} bytes");
        let (without, _) = churn(false);
        assert!(
            without > 20,
            "the scenario must pin segments without compaction: {without}"
        );
    }
}
