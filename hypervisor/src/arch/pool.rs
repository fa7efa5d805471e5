//! L0's pool: the frames at the top of RAM that L0 keeps for itself, with
//! the frame allocator and the heap over them. Pool frames are
//! identity-mapped and never mapped for a guest (EPT01 leaves them out).

use boot::memmap::Range;

use super::fault::fatal;
use crate::mm::frames::{FrameAllocator, FRAME};
use crate::mm::paging::TableMemory;

#[global_allocator]
static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

static FRAMES: spin::Mutex<Option<FrameAllocator>> = spin::Mutex::new(None);

/// Page tables and EPT tables live in pool frames, reached through the
/// identity map.
#[derive(Clone, Copy)]
pub struct PoolTables;

impl TableMemory for PoolTables {
    fn alloc_table(&mut self) -> Option<u64> {
        let f = FRAMES.lock().as_mut()?.alloc().ok()?;
        // SAFETY: a fresh pool frame, identity-mapped, owned by L0 alone.
        unsafe { core::ptr::write_bytes(f as *mut u8, 0, FRAME as usize) };
        Some(f)
    }
    fn table(&mut self, phys: u64) -> &mut [u64; 512] {
        // SAFETY: callers pass frames from alloc_table (pool, identity-mapped).
        unsafe { &mut *(phys as *mut [u64; 512]) }
    }
    fn free_table(&mut self, phys: u64) {
        if let Some(Err(e)) = FRAMES.lock().as_mut().map(|f| f.free(phys, 1)) {
            panic!("{e}");
        }
    }
}

pub fn alloc_frames(n: usize, what: &str) -> u64 {
    let r = FRAMES.lock().as_mut().map(|f| f.alloc_contiguous(n, FRAME));
    match r {
        Some(Ok(a)) => {
            // SAFETY: fresh pool frames, identity-mapped.
            unsafe { core::ptr::write_bytes(a as *mut u8, 0, n * FRAME as usize) };
            a
        }
        Some(Err(e)) => fatal(format_args!("{what}: {e}; raise l0_mem=")),
        None => fatal(format_args!("{what}: no frame allocator")),
    }
}

/// Heap bytes not allocated now (free space, not the largest free block).
pub fn heap_free() -> usize {
    HEAP.lock().free()
}

/// Frame allocator and heap over the pool.
pub fn init(pool: Range, heap_size: u64) {
    let frames = (pool.len() / FRAME) as usize;
    let words = FrameAllocator::bitmap_words(frames);
    let bitmap_frames = (words * 8).div_ceil(FRAME as usize);
    // SAFETY: the pool is free RAM below 4 GiB (identity-mapped by the entry
    // code) that nothing else uses; the bitmap takes its first frames.
    let bits = unsafe { core::slice::from_raw_parts_mut(pool.start as *mut u64, words) };
    let mut fa = FrameAllocator::new(pool.start, frames, bits);
    fa.reserve(pool.start, bitmap_frames);
    let heap = fa
        .alloc_contiguous((heap_size / FRAME) as usize, FRAME)
        .unwrap_or_else(|e| fatal(format_args!("heap: {e}")));
    *FRAMES.lock() = Some(fa);
    // SAFETY: `heap` is ours alone and identity-mapped.
    unsafe { HEAP.lock().init(heap as *mut u8, heap_size as usize) };
}
