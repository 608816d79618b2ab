//! Fuzz target `broker_url`: see `../parsers_body.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../parsers_body.rs");

fuzz_target!(|data: &[u8]| broker_url_body(data));
