//! Fuzzes what a peer can send before and after the protocol header: the server
//! connection engine and the frame splitter. The body is shared with the stable
//! stand-in `shards/tests/fuzz_smoke.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../frame_decoder_body.rs");

fuzz_target!(|data: &[u8]| frame_decoder_body(data));
