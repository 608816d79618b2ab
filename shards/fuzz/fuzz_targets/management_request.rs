//! Fuzz target `management_request`: see `../amqp_body.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../amqp_body.rs");

fuzz_target!(|data: &[u8]| management_request_body(data));
