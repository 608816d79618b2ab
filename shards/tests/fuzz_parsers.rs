//! The `broker_url`, `users_file` and `sasl_login` fuzz targets' bodies
//! (shards/fuzz) on the stable toolchain: seeded pseudo-random inputs and
//! mutations of valid ones, the same every run, so `cargo test` keeps the
//! bodies compiling and catches regressions; `scripts/fuzz` explores further.

#![allow(dead_code)]

include!("../fuzz/parsers_body.rs");

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// `seed` with a few bytes flipped, inserted or cut.
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut out = seed.to_vec();
        for _ in 0..1 + self.next() % 4 {
            let at = (self.next() as usize) % (out.len() + 1);
            match self.next() % 3 {
                0 if at < out.len() => out[at] = self.next() as u8,
                1 => out.insert(at, b":,@/[]=\0\xff"[(self.next() % 9) as usize]),
                _ if at < out.len() => {
                    out.remove(at);
                }
                _ => {}
            }
        }
        out
    }
}

fn run(body: fn(&[u8]), seeds: &[&[u8]]) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for seed in seeds {
        body(seed);
        for _ in 0..2000 {
            body(&rng.mutate(seed));
        }
    }
    for _ in 0..2000 {
        let n = (rng.next() % 64) as usize;
        let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        body(&junk);
    }
}

#[test]
fn broker_urls() {
    run(
        broker_url_body,
        &[
            b"amqp:admin/secret@n1,ssl:n2:5999",
            b"amqps:u@[::1]:5671,tcp:h",
            b"localhost",
        ],
    );
}

#[test]
fn users_files() {
    run(
        users_file_body,
        &[
            b"alice:pw\n# c\nbob:scram-sha-256:4096:AAAAAAAAAAAAAAAAAAAAAA==:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
            b"x:y:z\n",
        ],
    );
}

#[test]
fn sasl_logins() {
    run(
        sasl_login_body,
        &[
            b"\x00\x00u\x00pw",
            b"\x01n,,n=u,r=abcdef\xffc=biws,r=abcdef,p=AAAA",
            b"\x02anonymous",
        ],
    );
}

#[test]
fn acl_files() {
    run(
        acl_file_body,
        &[
            b"group g a@QPID \\\n b\nacl allow g all all\nacl deny-log all publish exchange name=x* routingkey=a.#\nacl deny all all\n",
            b"acl allow all consume queue durable=true\n",
        ],
    );
}
