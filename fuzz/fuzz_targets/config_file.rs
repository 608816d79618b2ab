//! Fuzz target `config_file`: see `../config_body.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../config_body.rs");

fuzz_target!(|data: &[u8]| config_file_body(data));
