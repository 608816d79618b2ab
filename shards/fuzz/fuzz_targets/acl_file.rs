//! Fuzz target `acl_file`: see `../parsers_body.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../parsers_body.rs");

fuzz_target!(|data: &[u8]| acl_file_body(data));
