//! Fuzz target `durable_config`: see `../store_body.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../store_body.rs");

fuzz_target!(|data: &[u8]| durable_config_body(data));
