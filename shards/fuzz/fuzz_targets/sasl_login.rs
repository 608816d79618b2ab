//! Fuzz target `sasl_login`: see `../parsers_body.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../parsers_body.rs");

fuzz_target!(|data: &[u8]| sasl_login_body(data));
