//! Which messages arrived: one bit per (producer, sequence number), so a run can
//! say exactly how many were missing or duplicated. Each receiver keeps its own
//! tracker; the run merges them, counting a message two receivers both got as a
//! duplicate.

/// Producer ids above this are not ours (a broker mangled the body, or someone
/// else's message is on the queue): counted as unreadable.
const MAX_PRODUCERS: u32 = 1 << 16;
/// Sequence numbers at or above this are treated the same way (the bitmap would
/// be absurdly large).
const MAX_SEQ: u64 = 1 << 34;

#[derive(Debug, Clone, Default)]
struct Seen {
    bits: Vec<u64>,
    unique: u64,
    /// One past the highest sequence seen: a lower new one arrived out of order.
    next: u64,
}

/// What [`SequenceTracker::record`] made of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First time, after every earlier one from its producer.
    InOrder,
    /// First time, but after a later one from its producer.
    OutOfOrder,
    Duplicate,
    /// Not a stamp this run wrote.
    Unreadable,
}

/// Seen (producer, sequence) pairs.
#[derive(Debug, Clone, Default)]
pub struct SequenceTracker {
    producers: Vec<Seen>,
}

impl SequenceTracker {
    pub fn record(&mut self, producer: u32, seq: u64) -> Arrival {
        if producer >= MAX_PRODUCERS || seq >= MAX_SEQ {
            return Arrival::Unreadable;
        }
        let p = producer as usize;
        if self.producers.len() <= p {
            self.producers.resize_with(p + 1, Seen::default);
        }
        let seen = &mut self.producers[p];
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if seen.bits.len() <= word {
            // Grow geometrically: a run's sequence numbers only climb.
            let want = (word + 1).max(seen.bits.len() * 2);
            seen.bits.resize(want, 0);
        }
        if seen.bits[word] & bit != 0 {
            return Arrival::Duplicate;
        }
        seen.bits[word] |= bit;
        seen.unique += 1;
        if seq < seen.next {
            Arrival::OutOfOrder
        } else {
            seen.next = seq + 1;
            Arrival::InOrder
        }
    }

    /// Distinct messages seen from `producer`.
    pub fn unique(&self, producer: u32) -> u64 {
        self.producers
            .get(producer as usize)
            .map_or(0, |s| s.unique)
    }

    /// Adds what `other` saw; returns how many it saw that we had seen too.
    pub fn merge(&mut self, other: &SequenceTracker) -> u64 {
        if self.producers.len() < other.producers.len() {
            self.producers
                .resize_with(other.producers.len(), Seen::default);
        }
        let mut duplicates = 0;
        for (mine, theirs) in self.producers.iter_mut().zip(&other.producers) {
            if mine.bits.len() < theirs.bits.len() {
                mine.bits.resize(theirs.bits.len(), 0);
            }
            for (a, b) in mine.bits.iter_mut().zip(&theirs.bits) {
                duplicates += u64::from((*a & *b).count_ones());
                *a |= *b;
            }
            mine.unique = mine.bits.iter().map(|w| u64::from(w.count_ones())).sum();
            mine.next = mine.next.max(theirs.next);
        }
        duplicates
    }

    /// Messages producers got through (`(producer, count)`) that never arrived.
    pub fn missing(&self, delivered: &[(u32, u64)]) -> u64 {
        delivered
            .iter()
            .map(|(p, n)| n.saturating_sub(self.unique(*p)))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_order_duplicates_and_strangers() {
        let mut t = SequenceTracker::default();
        assert_eq!(t.record(0, 0), Arrival::InOrder);
        assert_eq!(t.record(0, 2), Arrival::InOrder);
        assert_eq!(t.record(0, 1), Arrival::OutOfOrder);
        assert_eq!(t.record(0, 2), Arrival::Duplicate);
        assert_eq!(t.record(1, 1000), Arrival::InOrder);
        assert_eq!(t.record(u32::MAX, 0), Arrival::Unreadable);
        assert_eq!(t.unique(0), 3);
        assert_eq!(t.unique(1), 1);
    }

    #[test]
    fn missing_messages_are_what_was_delivered_but_never_seen() {
        let mut t = SequenceTracker::default();
        for seq in (0..100).filter(|s| s % 10 != 3) {
            t.record(0, seq);
        }
        for seq in 0..50 {
            t.record(1, seq);
        }
        assert_eq!(t.missing(&[(0, 100), (1, 50)]), 10);
        assert_eq!(t.missing(&[(0, 100), (1, 50), (2, 7)]), 17);
    }

    #[test]
    fn merging_receivers_counts_messages_both_got_as_duplicates() {
        let mut a = SequenceTracker::default();
        let mut b = SequenceTracker::default();
        for seq in 0..600 {
            if seq % 2 == 0 {
                a.record(0, seq);
            } else {
                b.record(0, seq);
            }
        }
        b.record(0, 10);
        b.record(3, 5);
        assert_eq!(a.merge(&b), 1);
        assert_eq!(a.unique(0), 600);
        assert_eq!(a.unique(3), 1);
        assert_eq!(a.missing(&[(0, 600)]), 0);
    }
}
