//! A light ghost shares its heap with the other ghosts of its launch and must not allocate
//! (see `bproc_ghost::light`): the frames it encodes and decodes itself are checked here
//! with an allocator that counts.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bproc_proto::{ExitStatus, Message};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: passes every call to the system allocator unchanged, counting allocations.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the caller's layout, as GlobalAlloc requires.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: as for `dealloc`.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Allocations made by `f`.
fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    f();
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

#[test]
fn a_light_ghosts_frames_allocate_nothing() {
    let ends = [
        Message::ProcExit { launch: 0, rank: 0, status: ExitStatus::Code(7) },
        Message::ProcExit { launch: 9, rank: 3, status: ExitStatus::Signal(15) },
        Message::ProcExit { launch: 1, rank: 1, status: ExitStatus::NodeLost },
        Message::GhostState { stopped: true },
    ];
    let frames: Vec<Vec<u8>> = ends.iter().map(|m| bproc_proto::encode(0, m)).collect();
    let mut out = Vec::with_capacity(64);
    assert_eq!(allocations(|| drop(std::hint::black_box(vec![1u8]))), 1, "the count works");
    let n = allocations(|| {
        for sig in [1, 15, 20, 64] {
            let msg = Message::GhostSignal { signal: sig, sender: 1234 };
            bproc_proto::encode_into(&mut out, 0, &msg);
        }
        for f in &frames {
            let head = f.first_chunk::<{ bproc_proto::HEADER_LEN }>().unwrap();
            let h = bproc_proto::Header::parse(head).unwrap();
            let msg = bproc_proto::decode_body(&h, &f[bproc_proto::HEADER_LEN..]).unwrap();
            assert!(matches!(msg, Message::ProcExit { .. } | Message::GhostState { .. }));
        }
    });
    assert_eq!(n, 0, "allocations while encoding and decoding a light ghost's frames");
    assert_eq!(out, bproc_proto::encode(0, &Message::GhostSignal { signal: 64, sender: 1234 }));
}
