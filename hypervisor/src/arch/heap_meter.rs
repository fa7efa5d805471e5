//! Host tests' global allocator: the system's, counting per thread the
//! bytes live allocations would take in L0's heap (linked_list_allocator:
//! at least 16 bytes, in multiples of 8), so that a test measures what a
//! structure costs L0 by counting, not guessing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static HELD: Cell<isize> = const { Cell::new(0) };
}

fn charged(l: &Layout) -> isize {
    l.size().max(16).next_multiple_of(8) as isize
}

fn count(delta: isize) {
    let _ = HELD.try_with(|h| h.set(h.get() + delta));
}

/// Heap bytes this thread's live allocations hold (since the thread began).
pub fn held() -> isize {
    HELD.with(Cell::get)
}

struct Meter;

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counting touches only a thread-local integer and never allocates.
unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(charged(&l));
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(-charged(&l));
        // SAFETY: `p` came from `alloc` above with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static METER: Meter = Meter;
