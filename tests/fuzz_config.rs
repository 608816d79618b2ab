//! The `config_file` fuzz target's body (fuzz/) on the stable toolchain: the
//! shipped config file, a few thousand seeded mutations of it and of option
//! lines, and random bytes, the same every run, so `cargo test` keeps the
//! body compiling and catches regressions; `scripts/fuzz` explores further.

include!("../fuzz/config_body.rs");

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// `seed` with a few bytes overwritten with, or inserted as, pieces of
    /// TOML, or cut (never the first, which picks the body's mode).
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        const PIECES: &[u8] = b"=\"'\n#[]{},.:0159-+ _aeyst\xff";
        let mut out = seed.to_vec();
        for _ in 0..1 + self.next() % 4 {
            let at = 1 + (self.next() as usize) % out.len();
            let piece = PIECES[(self.next() as usize) % PIECES.len()];
            match self.next() % 3 {
                0 if at < out.len() => out[at] = piece,
                1 => out.insert(at.min(out.len()), piece),
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
fn config_files() {
    let shipped = include_str!("../config/tandemd.toml");
    let file = [&[0u8][..], shipped.as_bytes()].concat();
    let mut rng = Rng(0xc0_f19);
    config_file_body(&file);
    for _ in 0..1000 {
        config_file_body(&rng.mutate(&file));
    }
    // Option lines: ha-cluster, ha-brokers-url, ha-min-backups, a duration.
    let lines = b"\x01\x24true\xff\x25\"h1,h2\"\xff\x2c1\xff\x1c\"5s\"\xff\x1b65536";
    config_file_body(lines);
    for _ in 0..2000 {
        config_file_body(&rng.mutate(lines));
    }
    for _ in 0..300 {
        let n = (rng.next() % 48) as usize;
        let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        config_file_body(&junk);
    }
}
