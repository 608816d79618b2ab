//! Sets of queue positions as sorted, disjoint ranges of consecutive
//! positions (`(first, last)`, both included): what a backup holds of a
//! queue, and what of it a primary still has, cost a few numbers each when
//! the queue is mostly consumed from its head.

/// Ranges of sorted, distinct positions.
pub fn from_sorted(positions: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for p in positions {
        match out.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(p) => *last = p,
            _ => out.push((p, p)),
        }
    }
    out
}

/// Whether `position` is in `ranges` (sorted and disjoint).
pub fn contains(ranges: &[(u64, u64)], position: u64) -> bool {
    let i = ranges.partition_point(|&(_, last)| last < position);
    ranges.get(i).is_some_and(|&(first, _)| first <= position)
}

/// How many positions `ranges` hold.
pub fn count(ranges: &[(u64, u64)]) -> u64 {
    ranges
        .iter()
        .map(|&(first, last)| last.saturating_sub(first).saturating_add(1))
        .sum()
}

/// Whether `ranges` are sorted, disjoint and each well formed (a peer's
/// ranges are checked before use).
pub fn well_formed(ranges: &[(u64, u64)]) -> bool {
    ranges.iter().all(|&(first, last)| first <= last) && ranges.windows(2).all(|w| w[0].1 < w[1].0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_become_ranges_and_membership_is_exact() {
        let r = from_sorted([1, 2, 3, 7, 9, 10]);
        assert_eq!(r, vec![(1, 3), (7, 7), (9, 10)]);
        assert_eq!(count(&r), 6);
        for p in 0..12 {
            assert_eq!(contains(&r, p), [1, 2, 3, 7, 9, 10].contains(&p), "{p}");
        }
        assert!(from_sorted([]).is_empty());
        assert_eq!(
            from_sorted([u64::MAX - 1, u64::MAX]),
            vec![(u64::MAX - 1, u64::MAX)]
        );
    }

    #[test]
    fn malformed_ranges_are_told_apart() {
        assert!(well_formed(&[(1, 3), (5, 5)]));
        assert!(!well_formed(&[(3, 1)]));
        assert!(!well_formed(&[(1, 3), (3, 4)]));
        assert!(!well_formed(&[(5, 6), (1, 2)]));
    }
}
