//! Which shard owns a queue: a stable hash of its name, the same on every broker
//! and every run (HA relies on that), independent of Rust's randomised hasher.

/// 64-bit FNV-1a of the name.
fn fnv1a(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The shard (0..shards) that owns the queue `name`.
pub fn shard_of(name: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    (fnv1a(name) % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_stable_and_spreads() {
        assert_eq!(shard_of("orders", 1), 0);
        assert_eq!(shard_of("orders", 4), shard_of("orders", 4));
        let mut seen = [0usize; 4];
        for i in 0..400 {
            seen[shard_of(&format!("q{i}"), 4)] += 1;
        }
        assert!(seen.iter().all(|n| *n > 50), "{seen:?}");
        // Pinned values: changing the hash would move queues between shards of a
        // running cluster, so it must never change silently.
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
