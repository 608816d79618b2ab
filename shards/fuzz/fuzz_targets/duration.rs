//! Fuzz target `duration`: see `../duration_body.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../duration_body.rs");

fuzz_target!(|data: &[u8]| duration_body(data));
