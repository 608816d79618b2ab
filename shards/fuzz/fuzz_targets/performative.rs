//! Fuzz target `performative`: see `../amqp_body.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../amqp_body.rs");

fuzz_target!(|data: &[u8]| performative_body(data));
