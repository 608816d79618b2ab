//! Fuzz target `message_sections`: see `../amqp_body.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../amqp_body.rs");

fuzz_target!(|data: &[u8]| message_sections_body(data));
