//! The frame allocator over L0's pool: one bit per 4 KiB frame.
//!
//! The pool is a contiguous range carved from the top of RAM at boot; it is
//! never mapped into the cloud VM, so everything allocated here is L0's
//! alone. The bitmap itself lives in the pool's first frames.

use core::fmt;

pub const FRAME: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// No run of free frames that long (with that alignment).
    Exhausted { frames: usize },
    /// Freeing a frame outside the pool or not allocated: an L0 bug.
    BadFree(u64),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exhausted { frames } => {
                write!(f, "L0's pool has no {frames} free contiguous frames")
            }
            Self::BadFree(a) => write!(f, "freeing {a:#x}, which is not an allocated pool frame"),
        }
    }
}

pub struct FrameAllocator {
    base: u64,
    frames: usize,
    /// Bit set = in use.
    bits: &'static mut [u64],
    free: usize,
    /// Where the next single-frame search starts.
    hint: usize,
}

impl FrameAllocator {
    /// Words of bitmap needed for `frames` frames.
    pub const fn bitmap_words(frames: usize) -> usize {
        frames.div_ceil(64)
    }

    /// An allocator over `frames` frames from `base`, all free.
    pub fn new(base: u64, frames: usize, bits: &'static mut [u64]) -> Self {
        assert!(bits.len() >= Self::bitmap_words(frames) && base.is_multiple_of(FRAME));
        bits.fill(0);
        // Bits past the end are permanently "used".
        for i in frames..bits.len() * 64 {
            bits[i / 64] |= 1 << (i % 64);
        }
        FrameAllocator {
            base,
            frames,
            bits,
            free: frames,
            hint: 0,
        }
    }

    pub fn base(&self) -> u64 {
        self.base
    }
    pub fn end(&self) -> u64 {
        self.base + self.frames as u64 * FRAME
    }
    pub fn free_frames(&self) -> usize {
        self.free
    }

    fn used(&self, i: usize) -> bool {
        self.bits[i / 64] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: usize, used: bool) {
        if used {
            self.bits[i / 64] |= 1 << (i % 64);
        } else {
            self.bits[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Marks `[addr, addr + n frames)` used (for the bitmap's own frames).
    pub fn reserve(&mut self, addr: u64, n: usize) {
        let first = ((addr - self.base) / FRAME) as usize;
        for i in first..first + n {
            if !self.used(i) {
                self.set(i, true);
                self.free -= 1;
            }
        }
    }

    /// One frame (not zeroed).
    pub fn alloc(&mut self) -> Result<u64, FrameError> {
        let words = self.bits.len();
        for k in 0..words {
            let w = (self.hint / 64 + k) % words;
            if self.bits[w] != u64::MAX {
                let i = w * 64 + (!self.bits[w]).trailing_zeros() as usize;
                self.set(i, true);
                self.free -= 1;
                self.hint = i;
                return Ok(self.base + i as u64 * FRAME);
            }
        }
        Err(FrameError::Exhausted { frames: 1 })
    }

    /// `n` contiguous frames whose first frame is aligned to `align` bytes.
    pub fn alloc_contiguous(&mut self, n: usize, align: u64) -> Result<u64, FrameError> {
        let step = (align.max(FRAME) / FRAME) as usize;
        let offset = ((self.base.next_multiple_of(align.max(FRAME)) - self.base) / FRAME) as usize;
        let mut start = offset;
        while start + n <= self.frames {
            match (start..start + n).rev().find(|&i| self.used(i)) {
                None => {
                    for i in start..start + n {
                        self.set(i, true);
                    }
                    self.free -= n;
                    return Ok(self.base + start as u64 * FRAME);
                }
                // Next aligned candidate past the busy frame.
                Some(busy) => start = offset + (busy + 1 - offset).div_ceil(step) * step,
            }
        }
        Err(FrameError::Exhausted { frames: n })
    }

    /// Returns `n` frames from `addr`.
    pub fn free(&mut self, addr: u64, n: usize) -> Result<(), FrameError> {
        if addr < self.base || !addr.is_multiple_of(FRAME) || addr + n as u64 * FRAME > self.end() {
            return Err(FrameError::BadFree(addr));
        }
        let first = ((addr - self.base) / FRAME) as usize;
        if let Some(i) = (first..first + n).find(|&i| !self.used(i)) {
            return Err(FrameError::BadFree(self.base + i as u64 * FRAME));
        }
        for i in first..first + n {
            self.set(i, false);
        }
        self.free += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(frames: usize) -> FrameAllocator {
        let bits = Box::leak(vec![0u64; FrameAllocator::bitmap_words(frames)].into_boxed_slice());
        FrameAllocator::new(0x1000_0000, frames, bits)
    }

    #[test]
    fn allocates_every_frame_once() {
        let mut a = pool(100);
        let mut got: Vec<u64> = (0..100).map(|_| a.alloc().unwrap()).collect();
        assert_eq!(a.alloc(), Err(FrameError::Exhausted { frames: 1 }));
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 100);
        assert!(got
            .iter()
            .all(|&f| (0x1000_0000..0x1000_0000 + 100 * FRAME).contains(&f)));
        assert_eq!(a.free_frames(), 0);
    }

    #[test]
    fn free_and_reuse() {
        let mut a = pool(10);
        let f = a.alloc().unwrap();
        a.free(f, 1).unwrap();
        assert_eq!(a.free(f, 1), Err(FrameError::BadFree(f)));
        assert_eq!(a.free(0x2000, 1), Err(FrameError::BadFree(0x2000)));
        assert_eq!(a.free_frames(), 10);
    }

    #[test]
    fn contiguous_and_aligned() {
        let mut a = pool(1024);
        let x = a.alloc().unwrap();
        assert_eq!(x, 0x1000_0000);
        let r = a.alloc_contiguous(16, 0x10000).unwrap();
        assert_eq!(r % 0x10000, 0);
        assert!(r > x);
        let r2 = a.alloc_contiguous(3, FRAME).unwrap();
        assert_eq!(r2, x + FRAME);
        assert_eq!(
            a.alloc_contiguous(2000, FRAME),
            Err(FrameError::Exhausted { frames: 2000 })
        );
        assert_eq!(a.free_frames(), 1024 - 20);
    }

    #[test]
    fn contiguous_aligned_in_unaligned_pool() {
        let bits = Box::leak(vec![0u64; 16].into_boxed_slice());
        let mut a = FrameAllocator::new(0x1000_3000, 1000, bits);
        let r = a.alloc_contiguous(4, 0x10000).unwrap();
        assert_eq!(r, 0x1001_0000);
        let r = a.alloc_contiguous(4, 0x10000).unwrap();
        assert_eq!(r, 0x1002_0000);
    }

    #[test]
    fn reserve_marks_used() {
        let mut a = pool(64);
        a.reserve(0x1000_0000, 2);
        assert_eq!(a.alloc().unwrap(), 0x1000_2000);
        assert_eq!(a.free_frames(), 61);
    }
}
