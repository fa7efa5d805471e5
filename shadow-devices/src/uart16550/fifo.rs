//! Bounded byte queues: the 16-byte hardware FIFOs and the console rings.
//!
//! Both are fixed-capacity rings that never reallocate after construction
//! (L0 runs them on the guest's I/O path) and never panic: push on a full
//! queue and pop on an empty one are reported, not trapped.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use super::registers::FIFO_DEPTH;

/// A 16-byte FIFO whose usable capacity is 16 (FIFO mode) or 1 (16450 mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fifo {
    buf: [u8; FIFO_DEPTH],
    head: usize,
    len: usize,
}

impl Default for Fifo {
    fn default() -> Self {
        Fifo {
            buf: [0; FIFO_DEPTH],
            head: 0,
            len: 0,
        }
    }
}

impl Fifo {
    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends if fewer than `capacity` (≤ 16) bytes are held.
    pub fn push(&mut self, byte: u8, capacity: usize) -> bool {
        if self.len >= capacity.min(FIFO_DEPTH) {
            return false;
        }
        self.buf[(self.head + self.len) % FIFO_DEPTH] = byte;
        self.len += 1;
        true
    }

    /// Removes the oldest byte.
    pub fn pop(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let b = self.buf[self.head];
        self.head = (self.head + 1) % FIFO_DEPTH;
        self.len -= 1;
        Some(b)
    }

    /// The oldest byte.
    pub fn peek(&self) -> Option<u8> {
        (self.len > 0).then(|| self.buf[self.head])
    }

    /// Replaces the newest byte (16450-mode overrun overwrites RBR).
    pub fn overwrite_newest(&mut self, byte: u8) {
        if self.len > 0 {
            self.buf[(self.head + self.len - 1) % FIFO_DEPTH] = byte;
        }
    }

    /// Empties the FIFO.
    pub fn clear(&mut self) {
        *self = Fifo::default();
    }

    /// Contents, oldest first, as the two runs of the ring (the second
    /// may be empty).
    pub fn as_slices(&self) -> [&[u8]; 2] {
        let first = (FIFO_DEPTH - self.head).min(self.len);
        [
            &self.buf[self.head..self.head + first],
            &self.buf[..self.len - first],
        ]
    }

    /// Contents, oldest first.
    pub fn to_vec(&self) -> Vec<u8> {
        self.as_slices().concat()
    }

    /// Builds a FIFO from contents, oldest first (at most 16 bytes are kept;
    /// the state layer checks lengths before calling).
    pub fn from_slice(bytes: &[u8]) -> Fifo {
        let mut f = Fifo::default();
        for &b in bytes.iter().take(FIFO_DEPTH) {
            f.push(b, FIFO_DEPTH);
        }
        f
    }
}

/// A fixed-capacity ring of bytes (console output backlog, input queue).
#[derive(Clone, PartialEq, Eq)]
pub struct ByteRing {
    buf: Box<[u8]>,
    head: usize,
    len: usize,
}

impl core::fmt::Debug for ByteRing {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ByteRing")
            .field("capacity", &self.buf.len())
            .field("len", &self.len)
            .finish()
    }
}

impl ByteRing {
    /// An empty ring of `capacity` bytes.
    pub fn new(capacity: usize) -> ByteRing {
        ByteRing {
            buf: vec![0u8; capacity].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when full.
    pub fn is_full(&self) -> bool {
        self.len >= self.buf.len()
    }

    fn slot(&self, i: usize) -> usize {
        // head < cap and i ≤ len ≤ cap, so the sum cannot overflow.
        (self.head + i) % self.buf.len().max(1)
    }

    /// Appends; false when full.
    pub fn push(&mut self, byte: u8) -> bool {
        if self.is_full() {
            return false;
        }
        let at = self.slot(self.len);
        self.buf[at] = byte;
        self.len += 1;
        true
    }

    /// Removes the oldest byte.
    pub fn pop(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let b = self.buf[self.head];
        self.head = self.slot(1);
        self.len -= 1;
        Some(b)
    }

    /// Moves up to `out.len()` bytes out, oldest first; returns the count.
    pub fn pop_into(&mut self, out: &mut [u8]) -> usize {
        let mut n = 0;
        for slot in out.iter_mut() {
            match self.pop() {
                Some(b) => *slot = b,
                None => break,
            }
            n += 1;
        }
        n
    }

    /// Contents, oldest first, as the two runs of the ring (the second
    /// may be empty): copies of a slice each, not a byte at a time (saves
    /// run under emulators too).
    pub fn as_slices(&self) -> [&[u8]; 2] {
        let first = (self.buf.len() - self.head).min(self.len);
        [
            &self.buf[self.head..self.head + first],
            &self.buf[..self.len - first],
        ]
    }

    /// Contents, oldest first.
    pub fn to_vec(&self) -> Vec<u8> {
        self.as_slices().concat()
    }

    /// Empties the ring and refills it with `bytes` (truncated to capacity;
    /// the state layer checks lengths before calling).
    pub fn refill(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len());
        self.buf[..n].copy_from_slice(&bytes[..n]);
        self.head = 0;
        self.len = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_respects_capacity_and_order() {
        let mut f = Fifo::default();
        for i in 0..20u8 {
            let pushed = f.push(i, 16);
            assert_eq!(pushed, i < 16);
        }
        assert_eq!(f.len(), 16);
        assert_eq!(f.pop(), Some(0));
        assert!(f.push(99, 16));
        assert_eq!(f.to_vec()[15], 99);
        assert_eq!(Fifo::from_slice(&f.to_vec()).to_vec(), f.to_vec());
    }

    #[test]
    fn fifo_in_16450_mode_holds_one_byte() {
        let mut f = Fifo::default();
        assert!(f.push(1, 1));
        assert!(!f.push(2, 1));
        f.overwrite_newest(3);
        assert_eq!(f.pop(), Some(3));
        assert_eq!(f.pop(), None);
    }

    #[test]
    fn ring_wraps_and_reports_full() {
        let mut r = ByteRing::new(4);
        for i in 0..4 {
            assert!(r.push(i));
        }
        assert!(r.is_full() && !r.push(9));
        assert_eq!(r.pop(), Some(0));
        assert!(r.push(4));
        assert_eq!(r.to_vec(), [1, 2, 3, 4]);
        let mut out = [0u8; 3];
        assert_eq!(r.pop_into(&mut out), 3);
        assert_eq!(out, [1, 2, 3]);
        assert_eq!(r.to_vec(), [4]);
    }

    #[test]
    fn zero_capacity_ring_never_panics() {
        let mut r = ByteRing::new(0);
        assert!(!r.push(1));
        assert_eq!(r.pop(), None);
        assert!(r.to_vec().is_empty());
    }
}
