// The body of the `duration` fuzz target, shared with its stable stand-in
// `shards/tests/fuzz_duration.rs`: both `include!` this file.

/// Durations as operators write them: parsing never panics, what parses prints
/// as text that parses to the same duration, and so does every duration the
/// input's first 12 bytes make (seconds and nanoseconds).
fn duration_body(data: &[u8]) {
    use std::time::Duration;
    use tandem_shards::duration::{format_duration, parse_duration};

    let round_trip = |d: Duration, from: &dyn std::fmt::Debug| {
        let text = format_duration(d);
        match parse_duration(&text) {
            Ok(back) => assert_eq!(back, d, "{from:?} printed as {text:?}"),
            Err(e) => {
                panic!("{d:?} (from {from:?}) printed as {text:?}, which does not parse: {e}")
            }
        }
    };
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(d) = parse_duration(text) {
            round_trip(d, &text);
        }
    }
    if let Some(bytes) = data.get(..12) {
        let mut secs = [0u8; 8];
        secs.copy_from_slice(&bytes[..8]);
        let mut nanos = [0u8; 4];
        nanos.copy_from_slice(&bytes[8..]);
        let d = Duration::new(
            u64::from_le_bytes(secs),
            u32::from_le_bytes(nanos) % 1_000_000_000,
        );
        round_trip(d, &d);
    }
}
