//! L0's management UART, a 16550: its set-up and the register accesses the
//! log queue needs. A [`Uart`] exists only for a port L0 owns, so its
//! methods are safe.

use core::sync::atomic::{AtomicBool, Ordering};
use uart_16550::SerialPort;

use super::cpu;

/// LSR bits: data ready, transmitter holding register empty, transmitter
/// empty.
const LSR_DR: u8 = 1 << 0;
const LSR_THRE: u8 = 1 << 5;
const LSR_TEMT: u8 = 1 << 6;

#[derive(Clone, Copy, Debug)]
pub struct Uart {
    base: u16,
}

impl Uart {
    /// Takes the UART at `base` for L0's management line, once (None
    /// after): sets it up for 115200 8N1, interrupt output off (the IRQ line
    /// belongs to L1's interrupt controller: L0 polls), FIFOs on; returns it
    /// and how many bytes it takes at once (16 with the 16550A's FIFO, else
    /// 1). The port is then L0's alone: the operator chose it for L0 on the
    /// command line, and every guest's I/O bitmap traps it (`L0Ports::mgmt`).
    pub fn claim(base: u16) -> Option<(Uart, usize)> {
        static CLAIMED: AtomicBool = AtomicBool::new(false);
        if CLAIMED.swap(true, Ordering::SeqCst) {
            return None;
        }
        // SAFETY: the management UART, claimed once (above), L0's alone.
        let mut port = unsafe { SerialPort::new(base) };
        port.init();
        // SAFETY: same port. Divisor 1 = 115200 baud; IER=0 and MCR without
        // OUT2 keep the interrupt off the IRQ line. FIFOs on and cleared;
        // IIR bits 7:6 say whether there are any (16550A).
        let fifo = unsafe {
            cpu::outb(base + 3, 0x80);
            cpu::outb(base, 1);
            cpu::outb(base + 1, 0);
            cpu::outb(base + 3, 0x03);
            cpu::outb(base + 1, 0);
            cpu::outb(base + 4, 0x03);
            cpu::outb(base + 2, 0x07);
            if cpu::inb(base + 2) & 0xc0 == 0xc0 {
                16
            } else {
                1
            }
        };
        Some((Uart { base }, fifo))
    }

    pub fn base(&self) -> u16 {
        self.base
    }

    fn lsr(&self) -> u8 {
        // SAFETY: reading LSR of L0's own port has no side effect.
        unsafe { cpu::inb(self.base + 5) }
    }

    /// The transmitter takes bytes (up to its FIFO's size).
    pub fn can_send(&self) -> bool {
        self.lsr() & LSR_THRE != 0
    }

    /// Hands one byte to the transmitter; call while [`Uart::can_send`]
    /// said there is room.
    pub fn send(&self, b: u8) {
        // SAFETY: THR of L0's own port.
        unsafe { cpu::outb(self.base, b) }
    }

    /// A received byte, if one is there. An LSR of all ones is no UART (a
    /// port nothing decodes floats; a 16550 never shows every error at
    /// once): it has no data, or L0 would read the same byte forever.
    pub fn recv(&self) -> Option<u8> {
        let lsr = self.lsr();
        // SAFETY: RBR of L0's own port, read only when data is ready.
        (lsr != 0xff && lsr & LSR_DR != 0).then(|| unsafe { cpu::inb(self.base) })
    }

    /// Everything sent has left the transmitter.
    pub fn idle(&self) -> bool {
        self.lsr() & LSR_TEMT != 0
    }
}

/// Raw bytes to COM2 before any UART is set up (bad boot information):
/// where the default management line is.
pub fn early_print(s: &str) {
    // Nothing else owns COM2 yet; it is used as the firmware left it.
    let com2 = Uart { base: 0x2f8 };
    for b in s.bytes() {
        while !com2.can_send() {}
        com2.send(b);
    }
}
