//! Fuzz target `journal_segment`: see `../store_body.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../store_body.rs");

fuzz_target!(|data: &[u8]| journal_segment_body(data));
