//! A port's output history for owner sessions: every byte the guest sent
//! since the history began, addressed by its offset in that stream, the
//! newest [`HISTORY_CAPACITY`] kept. Readers never consume it (many
//! owners read one port, each at its own offset), unlike the operator's
//! backlog ring.
//!
//! A history is *wanted* as soon as an owner may read the port (cheap: no
//! buffer); its buffer is allocated in full when the first byte arrives,
//! so only a used port costs memory. The buffer is charged to a
//! [`HistoryBudget`] (L0 sizes it from `l0_mem`) and taken with a fallible
//! allocation: with the budget spent or the heap short, the history is
//! *unavailable* for good (the port works; owner reads are refused) and
//! nothing else changes. The sealed save carries the newest
//! [`HISTORY_SEALED_TAIL`] bytes with their offsets (registry.rs), so a
//! restored history continues at the same offsets.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of output a history keeps (per used port): the mebibyte owners
/// are promised and 64 KiB of slack, so an owner reading a full
/// mebibyte back while the guest prints does not lose its oldest bytes.
pub const HISTORY_CAPACITY: usize = (1 << 20) + HISTORY_SEALED_TAIL;

/// The newest bytes of a history a sealed save carries (per port).
pub const HISTORY_SEALED_TAIL: usize = 64 << 10;

/// How many histories may hold a buffer at once (shared by every VM).
#[derive(Debug)]
pub struct HistoryBudget {
    /// Buffers that may still be allocated.
    left: AtomicUsize,
}

impl HistoryBudget {
    /// A budget of `histories` buffers.
    pub const fn new(histories: usize) -> HistoryBudget {
        HistoryBudget {
            left: AtomicUsize::new(histories),
        }
    }

    /// Sets the budget before any history exists (L0 at boot).
    pub fn set(&self, histories: usize) {
        self.left.store(histories, Ordering::Relaxed);
    }

    /// Buffers that may still be allocated.
    pub fn left(&self) -> usize {
        self.left.load(Ordering::Relaxed)
    }

    fn take(&self) -> bool {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    fn give_back(&self) {
        self.left.fetch_add(1, Ordering::AcqRel);
    }
}

/// Why a history has no bytes to give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryUnavailable {
    /// The budget had no room for another buffer.
    Budget,
    /// The heap could not give a buffer this large.
    Memory,
}

/// The history of one port.
#[derive(Debug)]
pub struct OutputHistory {
    budget: &'static HistoryBudget,
    /// The ring's size once allocated ([`HISTORY_CAPACITY`]).
    capacity: usize,
    /// The ring: no buffer until the first byte, then room for
    /// `capacity` bytes, filled by pushing (never zeroed: a megabyte of
    /// stores under an emulator is a restore's whole cost), then reused;
    /// the byte at offset `o` is at `(o - base) % capacity`.
    ring: Vec<u8>,
    /// The offset of the ring's first byte.
    base: u64,
    /// Offset of the oldest byte kept.
    start: u64,
    /// Offset after the newest byte (bytes sent since the history began).
    end: u64,
    /// Set when the buffer could not be had; offsets still advance.
    unavailable: Option<HistoryUnavailable>,
}

impl OutputHistory {
    /// A wanted history, no buffer yet.
    pub fn new(budget: &'static HistoryBudget) -> OutputHistory {
        Self::with_capacity(budget, HISTORY_CAPACITY)
    }

    fn with_capacity(budget: &'static HistoryBudget, capacity: usize) -> OutputHistory {
        OutputHistory {
            budget,
            capacity,
            ring: Vec::new(),
            base: 0,
            start: 0,
            end: 0,
            unavailable: None,
        }
    }

    /// A history continuing a sealed one: `tail` are the bytes before
    /// offset `end`. Its buffer is allocated now if `tail` holds any.
    /// The caller checked `tail.len() <= min(end, HISTORY_CAPACITY)`.
    pub fn continuing(budget: &'static HistoryBudget, end: u64, tail: &[u8]) -> OutputHistory {
        let mut h = OutputHistory::new(budget);
        h.start = end;
        h.end = end;
        h.reset_to(end, tail);
        h
    }

    /// Replaces what this history holds with `tail` ending at `end`,
    /// keeping its buffer if it has one.
    pub fn reset_to(&mut self, end: u64, tail: &[u8]) {
        self.start = end;
        self.end = end;
        self.base = end;
        self.ring.clear();
        if self.unavailable.is_some() || (!tail.is_empty() && !self.allocate()) {
            return;
        }
        self.base = end - tail.len() as u64;
        self.ring.extend_from_slice(tail);
        self.start = self.base;
    }

    /// Whether the buffer could not be had.
    pub fn unavailable(&self) -> Option<HistoryUnavailable> {
        self.unavailable
    }

    /// Whether the buffer is held (the port has been used).
    pub fn allocated(&self) -> bool {
        self.ring.capacity() != 0
    }

    fn slot(&self, offset: u64) -> usize {
        ((offset - self.base) % self.capacity as u64) as usize
    }

    /// Takes the buffer (charged to the budget); false, and unavailable
    /// for good, if the budget or the heap has no room.
    fn allocate(&mut self) -> bool {
        if self.allocated() {
            return true;
        }
        if !self.budget.take() {
            self.unavailable = Some(HistoryUnavailable::Budget);
            return false;
        }
        let mut ring = Vec::new();
        if ring.try_reserve_exact(self.capacity).is_err() {
            self.budget.give_back();
            self.unavailable = Some(HistoryUnavailable::Memory);
            return false;
        }
        self.ring = ring;
        self.base = self.end;
        true
    }

    /// One byte the guest sent.
    pub fn push(&mut self, b: u8) {
        if self.unavailable.is_none() && self.allocate() {
            if self.ring.len() < self.capacity {
                self.ring.push(b); // filling: the slot of `end`
            } else {
                let at = self.slot(self.end);
                self.ring[at] = b;
            }
            if self.end - self.start == self.capacity as u64 {
                self.start += 1;
            }
        } else {
            self.start = self.end + 1;
        }
        self.end += 1;
    }

    /// (offset of the oldest byte kept, offset after the newest).
    pub fn offsets(&self) -> (u64, u64) {
        (self.start, self.end)
    }

    /// Bytes from `from` (or from the oldest kept, when `from` is older)
    /// into `out`: (offset of `out[0]`, count, end); None when the
    /// history is unavailable.
    pub fn read(&self, from: u64, out: &mut [u8]) -> Option<(u64, usize, u64)> {
        if self.unavailable.is_some() {
            return None;
        }
        let from = from.clamp(self.start, self.end);
        let n = out.len().min((self.end - from) as usize);
        let [a, b] = self.runs(from, n);
        out[..a.len()].copy_from_slice(a);
        out[a.len()..a.len() + b.len()].copy_from_slice(b);
        Some((from, a.len() + b.len(), self.end))
    }

    /// The `n` bytes kept from offset `from` (`start ≤ from`, `from + n ≤
    /// end`) as at most two runs of the ring: to its end, then from its
    /// start (a copy each where they go; saves and owners' reads run
    /// under emulators too).
    fn runs(&self, from: u64, n: usize) -> [&[u8]; 2] {
        if n == 0 {
            return [&[], &[]];
        }
        let at = self.slot(from);
        let first = n.min(self.ring.len().saturating_sub(at));
        let second = (n - first).min(at);
        [&self.ring[at..at + first], &self.ring[..second]]
    }

    /// Appends the newest bytes kept, at most `max`, oldest first, to
    /// `out` (what a sealed save carries; none when unavailable).
    pub fn tail_into(&self, max: usize, out: &mut Vec<u8>) {
        if self.unavailable.is_some() {
            return;
        }
        let n = ((self.end - self.start) as usize).min(max);
        for run in self.runs(self.end - n as u64, n) {
            out.extend_from_slice(run);
        }
    }

    /// Whether the newest bytes kept are exactly `tail`, compared in
    /// place (a restore's rollback check).
    pub fn ends_with(&self, tail: &[u8]) -> bool {
        if self.unavailable.is_some() {
            return tail.is_empty();
        }
        if tail.len() as u64 > self.end - self.start {
            return false;
        }
        let [a, b] = self.runs(self.end - tail.len() as u64, tail.len());
        tail[..a.len()] == *a && tail[a.len()..] == *b
    }

    /// The newest bytes kept, at most `max`, oldest first.
    pub fn tail(&self, max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        self.tail_into(max, &mut out);
        out
    }
}

impl Clone for OutputHistory {
    /// A copy charged to the same budget (unavailable if it has no room).
    fn clone(&self) -> Self {
        let mut h = OutputHistory::with_capacity(self.budget, self.capacity);
        h.unavailable = self.unavailable;
        h.start = self.start;
        h.end = self.end;
        if self.allocated() && h.allocate() {
            h.ring.extend_from_slice(&self.ring);
            h.base = self.base;
        } else if self.allocated() {
            h.start = h.end;
        }
        h
    }
}

impl Drop for OutputHistory {
    fn drop(&mut self) {
        if self.allocated() {
            self.budget.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;

    fn budget(n: usize) -> &'static HistoryBudget {
        Box::leak(Box::new(HistoryBudget::new(n)))
    }

    #[test]
    fn reads_by_offset_and_says_what_was_missed() {
        let mut h = OutputHistory::new(budget(1));
        for &b in b"hello world" {
            h.push(b);
        }
        let mut out = [0u8; 5];
        assert_eq!(h.read(6, &mut out), Some((6, 5, 11)));
        assert_eq!(&out, b"world");
        assert_eq!(h.read(11, &mut out), Some((11, 0, 11)));
        assert_eq!(h.read(500, &mut out), Some((11, 0, 11)));
        for _ in 0..HISTORY_CAPACITY {
            h.push(b'x');
        }
        let (start, end) = h.offsets();
        assert_eq!((start, end), (11, 11 + HISTORY_CAPACITY as u64));
        // Asked from 0: the answer starts at 11, the first byte kept.
        assert_eq!(h.read(0, &mut out), Some((11, 5, end)));
        assert_eq!(&out, b"xxxxx");
    }

    #[test]
    fn keeps_a_mebibyte_by_offset() {
        let mut h = OutputHistory::new(budget(1));
        let byte = |o: u64| (o % 251) as u8;
        let total = HISTORY_CAPACITY as u64 + 3000;
        for o in 0..total {
            h.push(byte(o));
        }
        assert_eq!(h.offsets(), (3000, total));
        let mut out = [0u8; 7];
        for at in [3000, 3001, 700_000, total - 7] {
            assert_eq!(h.read(at, &mut out), Some((at, 7, total)));
            assert!(out
                .iter()
                .enumerate()
                .all(|(i, &b)| b == byte(at + i as u64)));
        }
    }

    #[test]
    fn the_buffer_comes_with_the_first_byte_and_goes_back_when_dropped() {
        let b = budget(1);
        let mut h = OutputHistory::new(b);
        assert!(!h.allocated());
        assert_eq!(b.left(), 1, "a wanted history costs nothing");
        h.push(b'a');
        assert!(h.allocated());
        assert_eq!(b.left(), 0);
        drop(h);
        assert_eq!(b.left(), 1);
    }

    #[test]
    fn no_room_leaves_the_history_unavailable_and_the_offsets_counting() {
        let b = budget(1);
        let mut first = OutputHistory::new(b);
        first.push(b'a');
        let mut second = OutputHistory::new(b);
        second.push(b'b');
        second.push(b'c');
        assert_eq!(second.unavailable(), Some(HistoryUnavailable::Budget));
        assert_eq!(second.read(0, &mut [0u8; 4]), None);
        assert_eq!(second.offsets(), (2, 2));
        assert!(second.tail(10).is_empty());
        // The first is untouched, and the refused one gave nothing back.
        assert_eq!(first.read(0, &mut [0u8; 4]), Some((0, 1, 1)));
        drop(second);
        assert_eq!(b.left(), 0);
    }

    #[test]
    fn a_heap_that_cannot_give_the_buffer_is_a_clean_refusal() {
        // The budget lets it try; the allocator refuses a ring this large.
        let b = budget(1);
        let mut h = OutputHistory::with_capacity(b, usize::MAX);
        h.push(b'x');
        assert_eq!(h.unavailable(), Some(HistoryUnavailable::Memory));
        assert_eq!(h.read(0, &mut [0u8; 1]), None);
        assert_eq!(h.offsets(), (1, 1));
        assert_eq!(b.left(), 1, "nothing charged");
        drop(h);
        assert_eq!(b.left(), 1);
    }

    #[test]
    fn a_continued_history_keeps_its_offsets() {
        let mut a = OutputHistory::new(budget(2));
        for o in 0..100_000u64 {
            a.push(o as u8);
        }
        let tail = a.tail(HISTORY_SEALED_TAIL);
        assert_eq!(tail.len(), HISTORY_SEALED_TAIL);
        let mut b = OutputHistory::continuing(budget(1), 100_000, &tail);
        assert_eq!(b.offsets(), (100_000 - HISTORY_SEALED_TAIL as u64, 100_000));
        b.push(b'!');
        let mut out = [0u8; 2];
        assert_eq!(b.read(99_999, &mut out), Some((99_999, 2, 100_001)));
        assert_eq!(out, [(99_999u64 as u8), b'!']);
        // Older than the tail: the answer starts where the tail does.
        assert_eq!(
            b.read(0, &mut out).unwrap().0,
            100_000 - HISTORY_SEALED_TAIL as u64
        );
    }

    #[test]
    fn a_history_reset_or_cloned_reads_the_same_and_wraps_right() {
        let b = budget(3);
        let mut h = OutputHistory::with_capacity(b, 8);
        for &x in b"0123456789ab" {
            h.push(x);
        }
        let mut out = [0u8; 8];
        assert_eq!(h.read(0, &mut out), Some((4, 8, 12)));
        assert_eq!(&out, b"456789ab");
        let c = h.clone();
        assert_eq!(c.read(6, &mut out), Some((6, 6, 12)));
        assert_eq!(&out[..6], b"6789ab");
        assert_eq!(c.tail(5), b"789ab", "across the ring's end");
        assert!(c.ends_with(b"789ab") && !c.ends_with(b"689ab"));
        assert!(!c.ends_with(b"0123456789ab"), "longer than what is kept");
        // Replaced by a sealed tail (its buffer kept), then wrapping again.
        h.reset_to(100, b"xyz");
        assert_eq!(h.offsets(), (97, 100));
        for &x in b"ABCDEFG" {
            h.push(x);
        }
        assert_eq!(h.read(0, &mut out), Some((99, 8, 107)));
        assert_eq!(&out, b"zABCDEFG");
        assert_eq!(b.left(), 1, "two buffers: the original and its clone");
    }

    use crate::uart16550::registers::*;
    use crate::uart16550::Uart16550;
    use crate::Console;

    #[test]
    fn a_uart_keeps_what_it_sent_once_enabled() {
        let mut u = Uart16550::new(0x3f8, 4);
        u.write(THR, b'a');
        u.enable_history(budget(1)); // seeded with the unpulled backlog
        u.write(THR, b'b');
        let mut out = [0u8; 4];
        let mut b = [0u8; 4];
        assert_eq!(u.pull_output(&mut b), 2, "the operator's ring is unchanged");
        assert_eq!(u.history_read(0, &mut out), Some((0, 2, 2)));
        assert_eq!(&out[..2], b"ab");
        assert_eq!(Uart16550::new(0x2f8, 3).history_read(0, &mut out), None);
    }

    #[test]
    fn a_uart_without_room_for_its_history_still_works() {
        let mut u = Uart16550::new(0x3f8, 4);
        u.enable_history(budget(0));
        u.write(THR, b'a');
        let mut b = [0u8; 4];
        assert_eq!(u.pull_output(&mut b), 1, "the port works");
        assert_eq!(u.history_read(0, &mut [0u8; 4]), None);
        assert_eq!(u.history_offsets(), None);
    }

    #[test]
    fn break_sets_bi_and_raises_the_line_status_interrupt() {
        let mut u = Uart16550::new(0x3f8, 4);
        u.write(MCR, MCR_OUT2);
        u.write(IER, IER_RLS);
        assert!(!u.irq_line());
        Console::send_break(&mut u);
        assert!(u.irq_line());
        assert_eq!(u.read(IIR) & 0x0f, IIR_RLS);
        assert_ne!(u.read(LSR) & LSR_BI, 0);
        // Reading LSR clears it, and the interrupt with it.
        assert_eq!(u.read(LSR) & LSR_BI, 0);
        assert!(!u.irq_line());
        // Without the interrupt enabled, BI is still seen in LSR.
        let mut quiet = Uart16550::new(0x3f8, 4);
        quiet.send_break();
        assert!(!quiet.irq_line());
        assert_ne!(quiet.read(LSR) & LSR_BI, 0);
    }

    #[test]
    fn a_pending_break_survives_save_and_restore() {
        let mut u = Uart16550::new(0x3f8, 4);
        u.send_break();
        let mut v = Uart16550::new(0x3f8, 4);
        v.restore_state(&u.save_state()).unwrap();
        assert_ne!(v.read(LSR) & LSR_BI, 0);
    }
}
