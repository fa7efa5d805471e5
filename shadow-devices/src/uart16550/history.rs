//! A port's output history for owner sessions: every byte the guest sent
//! since the history began, addressed by its offset in that stream, the
//! newest [`HISTORY_CAPACITY`] kept. Readers never consume it (many
//! owners read one port, each at its own offset), unlike the operator's
//! backlog ring. Not sealed in the device state: after a migration the
//! offsets begin again at 0 (docs/console-protocol.md).

use alloc::collections::VecDeque;

/// Bytes of output a history keeps. Allocated as output arrives, so an
/// idle port costs nothing; a busy one at most this (per port).
pub const HISTORY_CAPACITY: usize = 64 * 1024;

/// The history of one port.
#[derive(Clone, Debug, Default)]
pub struct OutputHistory {
    bytes: VecDeque<u8>,
    /// Offset after the newest byte (bytes sent since the history began).
    end: u64,
}

impl OutputHistory {
    /// One byte the guest sent.
    pub fn push(&mut self, b: u8) {
        if self.bytes.len() == HISTORY_CAPACITY {
            self.bytes.pop_front();
        }
        self.bytes.push_back(b);
        self.end += 1;
    }

    /// (offset of the oldest byte kept, offset after the newest).
    pub fn offsets(&self) -> (u64, u64) {
        (self.end - self.bytes.len() as u64, self.end)
    }

    /// Bytes from `from` (or from the oldest kept, when `from` is older)
    /// into `out`: (offset of `out[0]`, count, end).
    pub fn read(&self, from: u64, out: &mut [u8]) -> (u64, usize, u64) {
        let (start, end) = self.offsets();
        let from = from.clamp(start, end);
        let skip = (from - start) as usize;
        let n = out.len().min(self.bytes.len() - skip);
        for (o, b) in out.iter_mut().zip(self.bytes.range(skip..skip + n)) {
            *o = *b;
        }
        (from, n, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_by_offset_and_says_what_was_missed() {
        let mut h = OutputHistory::default();
        for &b in b"hello world" {
            h.push(b);
        }
        let mut out = [0u8; 5];
        assert_eq!(h.read(6, &mut out), (6, 5, 11));
        assert_eq!(&out, b"world");
        assert_eq!(h.read(11, &mut out), (11, 0, 11));
        assert_eq!(h.read(500, &mut out), (11, 0, 11));
        for _ in 0..HISTORY_CAPACITY {
            h.push(b'x');
        }
        let (start, end) = h.offsets();
        assert_eq!((start, end), (11, 11 + HISTORY_CAPACITY as u64));
        // Asked from 0: the answer starts at 11, the first byte kept.
        assert_eq!(h.read(0, &mut out), (11, 5, end));
        assert_eq!(&out, b"xxxxx");
    }

    use crate::uart16550::registers::*;
    use crate::uart16550::Uart16550;
    use crate::Console;

    #[test]
    fn a_uart_keeps_what_it_sent_once_enabled() {
        let mut u = Uart16550::new(0x3f8, 4);
        u.write(THR, b'a');
        u.enable_history(); // seeded with the unpulled backlog
        u.write(THR, b'b');
        let mut out = [0u8; 4];
        let mut b = [0u8; 4];
        assert_eq!(u.pull_output(&mut b), 2, "the operator's ring is unchanged");
        assert_eq!(u.history_read(0, &mut out), Some((0, 2, 2)));
        assert_eq!(&out[..2], b"ab");
        assert_eq!(Uart16550::new(0x2f8, 3).history_read(0, &mut out), None);
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
