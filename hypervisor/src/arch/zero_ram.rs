//! Zeroing the cloud VM's RAM on every CPU L0 started, before the cloud VM
//! is built: the boot CPU publishes the RAM in chunks; each CPU takes the
//! next chunk until none is left. One CPU's stores run at a fraction of
//! the memory's bandwidth, so a host with hundreds of GiB boots in
//! seconds rather than a minute.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use boot::memmap::Range;

use super::loader_memory;

/// The one round of work: the chunks, the next to take, how many are done.
struct Work {
    chunks: AtomicPtr<Range>,
    len: AtomicUsize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// Set once every chunk is done: the helpers go on to their jobs.
    closed: AtomicBool,
}

static WORK: Work = Work {
    chunks: AtomicPtr::new(core::ptr::null_mut()),
    len: AtomicUsize::new(0),
    next: AtomicUsize::new(0),
    done: AtomicUsize::new(0),
    closed: AtomicBool::new(false),
};

/// The boot CPU: zeroes `chunks` with every CPU that helps, and returns
/// when all are done.
///
/// # Safety
/// As `loader_memory::clear`: nothing of L0 may be in any chunk.
pub unsafe fn zero_all(mut chunks: Vec<Range>) {
    let n = chunks.len();
    WORK.len.store(n, Ordering::Relaxed);
    WORK.chunks.store(chunks.as_mut_ptr(), Ordering::Release);
    help();
    while WORK.done.load(Ordering::Acquire) < n {
        core::hint::spin_loop();
    }
    // Every chunk taken is done: no CPU reads the list any more (a late
    // helper finds `next` past the end before it would).
    WORK.closed.store(true, Ordering::Release);
    drop(chunks);
}

/// Any CPU: zeroes chunks while there are any to take.
pub fn help() {
    let p = WORK.chunks.load(Ordering::Acquire);
    if p.is_null() {
        return;
    }
    let n = WORK.len.load(Ordering::Relaxed);
    while WORK.next.load(Ordering::Relaxed) < n {
        let i = WORK.next.fetch_add(1, Ordering::AcqRel);
        if i >= n {
            break;
        }
        // SAFETY: i < n, within the leaked slice; the boot CPU vouched
        // for every chunk (`zero_all`), and each is taken once.
        unsafe { loader_memory::clear([*p.add(i)]) };
        WORK.done.fetch_add(1, Ordering::Release);
    }
}

/// An AP waiting for its job: helps until the boot CPU closes the round.
pub fn help_until_closed() {
    while !WORK.closed.load(Ordering::Acquire) {
        help();
        core::hint::spin_loop();
    }
}
