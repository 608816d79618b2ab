//! Fuzz target `replication_event`: see `../replication_body.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../replication_body.rs");

fuzz_target!(|data: &[u8]| replication_event_body(data));
