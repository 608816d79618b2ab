//! The `duration` fuzz target's body (shards/fuzz) on the stable toolchain:
//! seeded mutations of real durations and random bytes, the same every run.

include!("../fuzz/duration_body.rs");

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// `seed` with a few characters of durations overwritten, inserted or cut.
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        const PIECES: &[u8] = b"0123456789.+- \tmsuhn\xc2\xb5";
        let mut out = seed.to_vec();
        for _ in 0..1 + self.next() % 4 {
            let at = (self.next() as usize) % (out.len() + 1);
            let piece = PIECES[(self.next() as usize) % PIECES.len()];
            match self.next() % 3 {
                0 if at < out.len() => out[at] = piece,
                1 => out.insert(at, piece),
                _ if at < out.len() => {
                    out.remove(at);
                }
                _ => {}
            }
        }
        out
    }
}

#[test]
fn durations() {
    let seeds: [&[u8]; 8] = [
        b"5",
        b"0.1",
        b"1.5s",
        b"100ms",
        b"10us",
        b"10\xc2\xb5s",
        b" 2m ",
        b"18446744073709551615",
    ];
    let mut rng = Rng(0x0d0_5eed);
    for seed in seeds {
        duration_body(seed);
        for _ in 0..1000 {
            duration_body(&rng.mutate(seed));
        }
    }
    for _ in 0..2000 {
        let n = (rng.next() % 24) as usize;
        let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        duration_body(&junk);
    }
}
