//! The memory a decode may take is bounded by the bytes decoded: a peer must not be
//! able to make a shard allocate gigabytes with one 64 KiB frame.
//!
//! Measured with a counting global allocator, so this binary holds this one test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use tandem_shards::amqp::codec::Decoder;

/// `System`, counting bytes in use and the peak since the last reset.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to `System`, only adding bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak bytes allocated while decoding `input` (result dropped inside).
fn peak_decoding(input: Bytes) -> usize {
    let base = IN_USE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let _ = Decoder::new(input).value();
    PEAK.load(Ordering::Relaxed) - base
}

/// A generous bound: a decoded value tree may be some tens of times its
/// encoding (a 1-byte null becomes a 40-byte `Value`), never thousands.
fn bound(input_len: usize) -> usize {
    64 * input_len + (1 << 20)
}

/// A list of `n` arrays, each claiming 65536 zero-width (null) elements in 10
/// bytes: the decoder allows that per array, and nothing bounds the total.
fn many_null_arrays(n: u32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(0xd0);
    b.put_u32(4 + 10 * n);
    b.put_u32(n);
    for _ in 0..n {
        b.put_u8(0xf0);
        b.put_u32(5);
        b.put_u32(65536);
        b.put_u8(0x40);
    }
    b.freeze()
}

/// A described array of `n` one-byte elements whose descriptor is a list of `n`
/// nulls: every element gets its own clone of the descriptor (quadratic).
fn array_with_a_big_descriptor(n: u32) -> Bytes {
    let mut descriptor = BytesMut::new();
    descriptor.put_u8(0xd0);
    descriptor.put_u32(4 + n);
    descriptor.put_u32(n);
    descriptor.put_bytes(0x40, n as usize);
    let mut b = BytesMut::new();
    b.put_u8(0xf0);
    b.put_u32(4 + 1 + descriptor.len() as u32 + 1 + n);
    b.put_u32(n);
    b.put_u8(0x00);
    b.put_slice(&descriptor);
    b.put_u8(0x50); // ubyte elements
    b.put_bytes(7, n as usize);
    b.freeze()
}

#[test]
fn decoding_memory_is_bounded_by_the_input_size() {
    for (case, input) in [
        ("100 arrays of 65536 nulls", many_null_arrays(100)),
        (
            "array of 1000 with a 1000-element descriptor",
            array_with_a_big_descriptor(1000),
        ),
    ] {
        let len = input.len();
        let peak = peak_decoding(input);
        assert!(
            peak <= bound(len),
            "{case}: decoding {len} bytes allocated {} MB at peak (bound {} MB)",
            peak >> 20,
            bound(len) >> 20
        );
    }
}
